"""All-or-nothing output files: a temp file in the target's folder, fsync, rename.

A conversion that fails (bad checkpoint, failed verification, disk full, Ctrl-C) must leave no
half-written model where a user or a bundle builder would pick it up. Writing beside the target
keeps the final rename atomic (same file system).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from huatuo_cli.errors import HuatuoError


def check_target(out: Path, force: bool) -> None:
    """Refuse an existing output unless the user asked to replace it."""
    if out.exists() and not force:
        raise HuatuoError(f"{out} already exists", hint="pass --force to replace it")
    if out.is_dir():
        raise HuatuoError(f"{out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise HuatuoError(f"folder {out.parent} does not exist")


def output_error(exc: OSError, out: Path) -> HuatuoError:
    """An OSError writing `out` (full disk, read-only or unwritable folder) as the user's error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HuatuoError(f"disk full while writing {out.name}; nothing was left behind",
                           hint=f"free space in {out.parent} and run again")
    return HuatuoError(f"cannot write {out.name} in {out.parent}: {exc.strerror or exc.__class__.__name__}",
                       hint="choose an output folder you can write to")


def _temp_prefix(out: Path) -> str:
    """Temp names beside `out` carry the writer's pid: `.OUT.<pid>-<random>.<tag>`, so a later run
    can tell a dead run's leftovers (kill -9, power cut) from a live concurrent run's files."""
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
    """Remove temp files and folders beside `out` (`.OUT.<pid>-….tmp/.f16/.partial`) whose writer
    is dead: a killed conversion cannot clean up after itself, so the next one does. Returns them."""
    out = Path(out)
    pattern = re.compile(re.escape(f".{out.name}.") + r"(\d+)-[^/]*\.[a-z0-9_]+$")
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
    """A fresh, unused path beside `out` (hidden, so no tool mistakes it for a model)."""
    clean_leftovers(out)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(out), suffix=f".{tag}", dir=out.parent)
    except OSError as exc:
        raise output_error(exc, out) from exc
    os.close(fd)
    return Path(name)


def temp_dir(out: Path, tag: str = "partial") -> Path:
    """A fresh hidden folder beside `out` to build it in (same naming and cleaning as `temp_path`)."""
    clean_leftovers(out)
    try:
        return Path(tempfile.mkdtemp(prefix=_temp_prefix(out), suffix=f".{tag}", dir=out.parent))
    except OSError as exc:
        raise output_error(exc, out) from exc


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_output(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success it becomes `out`, on any failure it disappears.

    `OSError(ENOSPC)` anywhere inside becomes a HuatuoError that says the disk is full.
    """
    out = Path(out)
    check_target(out, force)
    tmp = temp_path(out)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise output_error(exc, out) from exc
        raise
    except BaseException:  # incl. KeyboardInterrupt and HuatuoError
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(out: Path, text: str) -> None:
    """Small text file (e.g. a JSON sidecar), all or nothing, replacing what was there."""
    with atomic_output(out, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
