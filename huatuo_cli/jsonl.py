"""The one reader of huatuo's append-only JSON-lines files (batch results and errors, the audit log).

Writers append each record as one line with a single O_APPEND write and fsync it
(`privacy.append_line`), so the only damage a crash can leave is at the very end: a write cut
short (a full disk, a power cut before the data reached the disk, NUL blocks after a power cut).
That torn last line is tolerated: it is dropped, and with `repair` truncated away so the next
append starts on a clean line; it never held a complete record, so nothing recorded is lost. A bad
line followed by good ones cannot come from a crash: the file was edited or damaged, and reading
on would silently lose or misreport records, so it is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError

#: what to do about a damaged file, unless the caller knows better
DAMAGED_HINT = "the file was edited or damaged; keep a copy and start a new one"


def read_jsonl(path: Path, *, repair: bool = False, hint: str = DAMAGED_HINT) -> list[dict[str, Any]]:
    """Complete JSON lines of `path`: a torn last line dropped (and truncated with `repair`), a bad
    line before good ones refused with a HuatuoError naming its line number."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    torn: tuple[int, int] | None = None  # (line number, byte offset) of the first bad line
    pos = 0
    number = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline + 1
        number += 1
        text = data[pos:end].strip(b" \t\r\n")
        if text:
            try:
                if newline < 0:
                    raise ValueError("no newline: the write never completed")
                record = json.loads(text)
            except ValueError:
                torn = torn or (number, pos)
            else:
                if torn:
                    raise HuatuoError(f"{path.name} line {torn[0]} is not valid JSON", hint=hint)
                records.append(record)
        pos = end
    if repair and torn:
        with open(path, "r+b") as handle:
            handle.truncate(torn[1])
            os.fsync(handle.fileno())
    return records


def repair_tail(path: Path) -> None:
    """Before appending: cut a torn last line (no final newline) so the new record does not glue
    onto it and turn a tolerated crash artefact into damage in the middle."""
    try:
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            step = 1 << 16
            cut, pos = 0, size
            while pos > 0:  # find the last newline, reading backwards
                start = max(0, pos - step)
                handle.seek(start)
                chunk = handle.read(pos - start)
                found = chunk.rfind(b"\n")
                if found >= 0:
                    cut = start + found + 1
                    break
                pos = start
            handle.truncate(cut)
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return
