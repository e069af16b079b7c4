"""Oracles for the SR tests: the reference validator (dciodvfy), dcmtk's dsrdump, and a plain walk
of the content tree with pydicom (independent of the highdicom code that wrote it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset

#: DICOM text VRs allow these control characters (UT/LT/ST); every other one is an error
ALLOWED_CONTROLS = {"\t", "\n", "\r", "\f"}


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error - ..." lines for a file (its warnings are not errors)."""
    tool = shutil.which("dciodvfy")
    assert tool, "dicom3tools' dciodvfy is required: `make system-deps` (apt-get install dicom3tools)"
    run = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, errors="replace")
    return [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def own_errors(sr: Path, sources: list[Path]) -> list[str]:
    """Errors dciodvfy finds in the SR that none of its source files already has (those are
    copied with the patient and study modules, and are not the SR's own)."""
    inherited = {line for source in sources for line in dciodvfy_errors(source)}
    return [line for line in dciodvfy_errors(sr) if line not in inherited]


def dsrdump(path: Path) -> str:
    tool = shutil.which("dsrdump")
    assert tool, "dcmtk's dsrdump is required for this test: `make system-deps` (apt-get install dcmtk)"
    run = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, errors="replace")
    assert run.returncode == 0, run.stderr
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.lstrip().startswith(("E:", "F:"))], \
        run.stdout + run.stderr
    return run.stdout


def walk(items: Dataset | list) -> Iterator[Dataset]:
    """Every content item under `items` (a dataset with ContentSequence, or a sequence), depth first."""
    sequence = items.get("ContentSequence", []) if isinstance(items, Dataset) else items
    for item in sequence:
        yield item
        yield from walk(item)


def meaning(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def children(item: Dataset, name: str) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if meaning(c) == name]


def text_of(item: Dataset, name: str) -> list[str]:
    return [str(c.TextValue) for c in children(item, name)]


def groups(sr: Dataset) -> list[Dataset]:
    """The TID 1501 measurement groups, in order."""
    return [i for i in walk(sr) if i.ValueType == "CONTAINER" and meaning(i) == "Measurement Group"]


def frames_referenced(group: Dataset) -> dict[str, list[int]]:
    """SOP Instance UID -> referenced frame numbers (empty list: none given) of a group's source images."""
    out = {}
    for item in group.ContentSequence:
        if item.ValueType == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            value = ref.get("ReferencedFrameNumber")
            numbers = [] if value in (None, "") else [value] if isinstance(value, int) else list(value)
            out[str(ref.ReferencedSOPInstanceUID)] = [int(f) for f in numbers]
    return out


def bad_characters(sr: Dataset) -> list[str]:
    """Control characters a text VR forbids, in any TextValue of the content tree."""
    return [repr(c) for item in walk(sr) if "TextValue" in item for c in str(item.TextValue)
            if (ord(c) < 0x20 and c not in ALLOWED_CONTROLS) or 0x7F <= ord(c) <= 0x9F]
