"""Owner-only outputs and the safety notice.

Every file huatuo writes (results, reports, SRs, thumbnails, the audit log) may describe a patient's
images, so it is created readable by its owner only, whatever the umask says. Writers go through
these helpers instead of `open()`, so a new output cannot forget the permissions.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Shown with every answer (stderr for `ask`, so stdout pipes stay clean) and written into reports.
NOTICE = "Not for diagnostic use: an AI-generated draft that a qualified reader must review."

FILE_MODE = 0o600
DIR_MODE = 0o700


#: What a library's error message may quote from a file: quoted values (names, UIDs, dates),
#: byte strings, absolute paths, and dotted numeric UIDs. `scrub` replaces each with a placeholder.
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" + r'|b?"(?:[^"\\]|\\.)*"')
#: any word with a slash in it: relative paths too ("DOE^JOHN/CT/IM1"), at the price of "Input/output"
_PATH = re.compile(r"[^\s'\"(\[]*[\\/][^\s:,;'\")\]]*")
_UID = re.compile(r"\b\d+(?:\.\d+){2,}\b")


def scrub(text: str) -> str:
    """`text` with every quoted value, path and UID replaced: for messages of exceptions huatuo did
    not raise itself (a decoder's complaint about a damaged element may quote its value: a patient
    name, a UID), before they reach errors.jsonl, reports or the terminal."""
    text = _QUOTED.sub("<value>", text)
    text = _PATH.sub("<path>", text)
    return _UID.sub("<uid>", text)


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


def writable_folder(path: str | os.PathLike[str], *, what: str) -> Path:
    """`private_dir(path)`, with a failure (read-only place, a file in the way, no permission, full
    disk) as a HuatuoError naming the option instead of a traceback."""
    from huatuo_cli.errors import HuatuoError

    try:
        folder = private_dir(path)
        probe = folder / f".huatuo-write-test.{os.getpid()}"
        os.close(open_private_fd(probe, os.O_WRONLY | os.O_EXCL))
        probe.unlink()
        return folder
    except OSError as exc:
        raise HuatuoError(f"cannot write to the {what} folder {path}: {exc.strerror or exc.__class__.__name__}",
                          hint=f"choose a {what} folder you can write to") from exc


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


@contextmanager
def exclusive(lock_path: Path, busy: Exception) -> Iterator[None]:
    """Hold an advisory lock (flock) on the owner-only file `lock_path`, or raise `busy` when another
    process holds it: two runs appending to one output would answer everything twice. The kernel
    releases it when the process ends however it ends, so a crash never leaves a stale lock."""
    fd = open_private_fd(lock_path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        yield
    finally:
        os.close(fd)


def write_private(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write a whole owner-only file atomically: readers never see half a report
    (`huatuo_cli.atomic.write_atomic`, the one file writer)."""
    from huatuo_cli.atomic import write_atomic

    return write_atomic(path, data, private=True)


def append_line(path: str | os.PathLike[str], line: str, *, fsync: bool = True) -> None:
    """Append one whole line with a single O_APPEND write, so concurrent writers never interleave
    inside a line and a crash leaves at most a torn last line (which readers drop)."""
    # a lone surrogate (a file name that is not UTF-8, kept by Python as surrogateescape) is written as
    # its JSON escape `\\udcXX`, which reads back as the same string: a name never stops a batch
    data = (line.rstrip("\n") + "\n").encode("utf-8", "backslashreplace")
    fd = open_private_fd(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk; the rest would interleave if written later
            raise OSError(errno.ENOSPC, f"short write to {Path(path).name}: {written} of {len(data)} bytes")
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
