"""All-or-nothing output files: a temp file in the target's folder, fsync, rename.

A conversion that fails (bad checkpoint, failed verification, disk full, Ctrl-C) must leave no
half-written model where a user or a bundle builder would pick it up. Writing beside the target
keeps the final rename atomic (same file system).
"""

from __future__ import annotations

import errno
import os
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


def temp_path(out: Path, tag: str = "tmp") -> Path:
    """A fresh, unused path beside `out` (hidden, so no tool mistakes it for a model)."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".{tag}", dir=out.parent)
    os.close(fd)
    return Path(name)


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
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HuatuoError(f"disk full while writing {out.name}; nothing was left behind",
                              hint=f"free space in {out.parent} and run again") from exc
        raise
    except BaseException:  # incl. KeyboardInterrupt and HuatuoError
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(out: Path, text: str) -> None:
    """Small text file (e.g. a JSON sidecar), all or nothing, replacing what was there."""
    with atomic_output(out, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
