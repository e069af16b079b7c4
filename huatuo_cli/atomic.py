"""All-or-nothing outputs: the one writer of whole files and the one publisher of folders.

A reader (a user, a resumed batch, a workstation loading a bundle) must see either the old
output or the complete new one, never half of it, whatever happens in between: an exception,
Ctrl-C, a full disk, a power cut. So every output is written under a unique hidden name in the
target's own folder (the rename must stay on one file system to be atomic; a fixed temp name
would let two writers clobber each other), fsynced, renamed over the target, and the folder is
fsynced so the rename itself survives a power cut. On any failure the temp file or folder is
removed; a full disk becomes a `HuatuoError` that says so.

The runtime writes through these helpers (privacy.write_private adds owner-only permissions);
the converter (`huatuo_convert.atomic`) re-exports them, so there is one implementation.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huatuo_cli.errors import HuatuoError

#: errno values that mean "no space left" (a quota counts as full too)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def check_target(out: Path, force: bool) -> None:
    """Refuse an existing output unless the user asked to replace it."""
    if out.exists() and not force:
        raise HuatuoError(f"{out} already exists", hint="pass --force to replace it")
    if out.is_dir():
        raise HuatuoError(f"{out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise HuatuoError(f"folder {out.parent} does not exist")


def temp_path(out: Path, tag: str = "tmp") -> Path:
    """A fresh, unused path beside `out` (hidden, so no tool mistakes it for a finished output)."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".{tag}", dir=out.parent)
    os.close(fd)
    return Path(name)


def _disk_full(exc: OSError, out: Path) -> HuatuoError:
    return HuatuoError(f"disk full while writing {out.name}; nothing was left behind",
                       hint=f"free space in {out.parent} and run again")


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, private: bool = False) -> Path:
    """Replace `path` with `data` all or nothing. `private`: mode 0600 whatever the umask, else
    the mode a plain `open()` would give (0666 minus the umask)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o600 if private else 0o666 & ~_umask())
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, path) from exc
        raise
    except BaseException:  # incl. KeyboardInterrupt
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_output(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path to write (by any tool); on success it becomes `out`, on any failure it
    disappears. For outputs written by other libraries (GGUF writers, ONNX savers)."""
    out = Path(out)
    check_target(out, force)
    tmp = temp_path(out)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, out) from exc
        raise
    except BaseException:  # incl. KeyboardInterrupt and HuatuoError
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(out: Path, *, force: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield a hidden temp folder beside `out`; when the block succeeds every file in it is
    fsynced and the folder is renamed to `out` (an existing `out` is replaced only with `force`);
    on any failure it is removed with everything in it. A bundle or a vision folder therefore
    appears complete or not at all."""
    out = Path(out)
    if out.exists() and not force:
        raise HuatuoError(f"{out} already exists", hint="pass --force to replace it")
    if not out.parent.is_dir():
        raise HuatuoError(f"folder {out.parent} does not exist")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        work.chmod(mode)  # mkdtemp makes it 0700; the published folder is an ordinary one by default
        yield work
        for folder, _dirs, files in os.walk(work):
            for name in files:
                fsync_file(Path(folder) / name)
            fsync_dir(folder)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        work.rename(out)
        fsync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, out) from exc
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_text_atomic(out: Path, text: str) -> None:
    """Small text file (e.g. a JSON sidecar), all or nothing, replacing what was there."""
    write_atomic(out, text)
