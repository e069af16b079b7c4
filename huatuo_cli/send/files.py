"""What `huatuo send` sends: DICOM files given one by one or found under folders.

A file is read once, whole: its bytes are hashed (the ledger's content key) and kept for the
transport, and its identifying UIDs are kept for the association and the ledger, never printed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from huatuo_cli.errors import HuatuoError


@dataclass(frozen=True)
class Outgoing:
    """One DICOM instance ready to send."""

    path: Path
    dataset: Dataset                 # the whole file, pixel data included
    sha256: str                      # of the file's bytes
    part10: bytes                    # the file as DICOM Part 10 (preamble, meta), what STOW-RS posts

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def expand(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Files named directly, plus every regular file under named folders (sorted, hidden names and
    the writers' temp files left out). Returns (explicit files, files found in folders)."""
    explicit: list[Path] = []
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(folder) / n for n in sorted(names) if not n.startswith("."))
        elif path.is_file():
            explicit.append(path)
        else:
            raise HuatuoError(f"{path}: no such file or folder")
    return explicit, found


def load(path: Path) -> Outgoing:
    """Read one file for sending; a HuatuoError (PHI-free) when it cannot be sent."""
    from io import BytesIO

    from huatuo_cli.imaging.dicomio import read_dicom
    from huatuo_cli.imaging.reject import Rejected

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HuatuoError(f"cannot read: {exc.strerror}") from None
    try:
        ds = read_dicom(path)
    except Rejected as exc:
        raise HuatuoError(str(exc)) from None
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not str(ds.get(keyword, "")).strip():
            raise HuatuoError(f"not sendable: no {keyword}")
    if len(data) >= 132 and data[128:132] == b"DICM":
        part10 = data
    else:  # an old file without preamble or meta: send it as a proper Part 10 file
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        part10 = buffer.getvalue()
    return Outgoing(path=path, dataset=ds, sha256=hashlib.sha256(data).hexdigest(), part10=part10)
