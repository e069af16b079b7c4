"""Owner-only outputs and the safety notice.

Every file huatuo writes (results, reports, SRs, thumbnails, the audit log) may describe a patient's
images, so it is created readable by its owner only, whatever the umask says. Writers go through
these helpers instead of `open()`, so a new output cannot forget the permissions.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Shown with every answer (stderr for `ask`, so stdout pipes stay clean) and written into reports.
NOTICE = "Not for diagnostic use: an AI-generated draft that a qualified reader must review."

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and missing parents) as owner-only folders; tighten it if it already exists.

    Only folders this call creates, plus `path` itself, are chmod-ed: an existing parent such as the
    user's home is left alone.
    """
    path = Path(path)
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    for folder in [path, *missing]:
        os.chmod(folder, DIR_MODE)
    return path


def open_private_fd(path: str | os.PathLike[str], flags: int) -> int:
    """os.open with O_CREAT and mode 0600, re-applied with fchmod: O_CREAT leaves the mode of an
    existing file (say one from before an upgrade, 0644) alone, and a strict umask may have cut it."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write a whole owner-only file atomically: readers never see half a report
    (`huatuo_cli.atomic.write_atomic`, the one file writer)."""
    from huatuo_cli.atomic import write_atomic

    return write_atomic(path, data, private=True)


def append_line(path: str | os.PathLike[str], line: str, *, fsync: bool = True) -> None:
    """Append one whole line with a single O_APPEND write, so concurrent writers never interleave
    inside a line and a crash leaves at most a torn last line (which readers drop)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = open_private_fd(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk; the rest would interleave if written later
            raise OSError(f"short write to {Path(path).name}: {written} of {len(data)} bytes")
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
