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
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


#: the hint of `refuse_existing` for the commands that have --force
FORCE_HINT = "pass --force to replace it"


def refuse_existing(out: Path, *, force: bool = False, hint: str | None = None) -> None:
    """The one "already exists" check of the writers: refuse an existing output unless `force`
    (a writer without a --force option passes its own `hint`)."""
    if out.exists() and not force:
        raise HuatuoError(f"{out} already exists", hint=hint or FORCE_HINT)


def check_target(out: Path, force: bool) -> None:
    """Refuse an existing output unless the user asked to replace it."""
    refuse_existing(out, force=force)
    if out.is_dir():
        raise HuatuoError(f"{out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise HuatuoError(f"folder {out.parent} does not exist")


#: errno values that mean the output place cannot take the file (read-only, no permission), beside DISK_FULL
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class OutputError(HuatuoError):
    """A user's error writing an output (full disk, read-only or unwritable folder). It keeps the
    OSError, so a caller that owns a larger output (a batch folder) can say more about what survived."""

    def __init__(self, message: str, *, hint: str, os_error: OSError) -> None:
        super().__init__(message, hint=hint)
        self.os_error = os_error


def output_error(exc: OSError, out: Path) -> OutputError:
    """An OSError writing `out` (full disk, read-only or unwritable folder) as the user's error."""
    if exc.errno in DISK_FULL:
        return OutputError(f"disk full while writing {out.name}; nothing was left behind",
                           hint=f"free space in {out.parent} and run again", os_error=exc)
    return OutputError(f"cannot write {out.name} in {out.parent}: {exc.strerror or exc.__class__.__name__}",
                       hint="choose an output folder you can write to", os_error=exc)


def _user_error(exc: OSError, out: Path) -> OutputError | None:
    """`output_error` for the errnos that are the user's to fix, else None (a bug: let it crash)."""
    return output_error(exc, out) if exc.errno in DISK_FULL + NOT_WRITABLE else None


def _temp_prefix(out: Path) -> str:
    """Temp names beside `out` carry the writer's pid (`.OUT.<pid>-<random>.<tag>`), so a later run
    can tell a dead run's leftovers (kill -9, power cut) from a live concurrent writer's files."""
    return f".{out.name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """Remove temp files and folders beside `out` (`.OUT.<pid>-….tmp/.f16/.partial`) whose writer is
    dead: a killed conversion cannot clean up after itself, so the next writer of `out` does."""
    out = Path(out)
    pattern = re.compile(re.escape(f".{out.name}.") + r"(\d+)-[^/]*\.[a-z0-9_]+")
    removed = []
    try:
        candidates = list(out.parent.iterdir())
    except OSError:
        return []
    for path in candidates:
        match = pattern.fullmatch(path.name)
        if not match or _alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def temp_path(out: Path, tag: str = "tmp") -> Path:
    """A fresh, unused path beside `out` (hidden, so no tool mistakes it for a finished output);
    a dead earlier writer's leftovers are removed first."""
    clean_leftovers(out)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(out), suffix=f".{tag}", dir=out.parent)
    except OSError as exc:
        raise output_error(exc, out) from exc
    os.close(fd)
    return Path(name)


@contextmanager
def _undone_on_failure(out: Path, remove: Callable[[], None]) -> Iterator[None]:
    """The one failure policy of every writer here: on any exception (Ctrl-C included) `remove` the
    temp file or folder; a full disk or an unwritable place becomes the user's `OutputError`."""
    try:
        yield
    except OSError as exc:
        remove()
        error = _user_error(exc, out)
        if error is not None:
            raise error from exc
        raise
    except BaseException:
        remove()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, private: bool = False) -> Path:
    """Replace `path` with `data` all or nothing. `private`: mode 0600 whatever the umask, else
    the mode a plain `open()` would give (0666 minus the umask)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8", "backslashreplace")  # a non-UTF-8 file name in a report: escaped, not a crash
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(exc, path) from exc
    tmp = Path(name)
    with _undone_on_failure(path, lambda: tmp.unlink(missing_ok=True)):
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
    return path


@contextmanager
def atomic_output(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path to write (by any tool); on success it becomes `out`, on any failure it
    disappears. For outputs written by other libraries (GGUF writers, ONNX savers)."""
    out = Path(out)
    check_target(out, force)
    tmp = temp_path(out)
    with _undone_on_failure(out, lambda: tmp.unlink(missing_ok=True)):  # HuatuoError from the block too
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, out)
        fsync_dir(out.parent)


@contextmanager
def atomic_folder(out: Path, *, force: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield a hidden temp folder beside `out`; when the block succeeds every file in it is
    fsynced and the folder is renamed to `out` (an existing `out` is replaced only with `force`);
    on any failure it is removed with everything in it. A bundle or a vision folder therefore
    appears complete or not at all."""
    out = Path(out)
    refuse_existing(out, force=force)
    if not out.parent.is_dir():
        raise HuatuoError(f"folder {out.parent} does not exist")
    clean_leftovers(out)
    try:
        work = Path(tempfile.mkdtemp(prefix=_temp_prefix(out), suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise output_error(exc, out) from exc
    with _undone_on_failure(out, lambda: shutil.rmtree(work, ignore_errors=True)):
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


def write_text_atomic(out: Path, text: str) -> None:
    """Small text file (e.g. a JSON sidecar), all or nothing, replacing what was there."""
    write_atomic(out, text)
