"""Local DICOM test corpora (pydicom's own files and the pydicom-data package), never downloaded."""

from __future__ import annotations

from pathlib import Path

import pydicom.data


def corpus() -> dict[str, Path]:
    """'pydicom:<rel>' / 'pydicom-data:<rel>' -> path, for every file both packages ship."""
    pyd_root = Path(pydicom.data.__file__).parent / "test_files"
    out: dict[str, Path] = {}
    for name in pydicom.data.get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        if path.is_relative_to(pyd_root):
            out["pydicom:" + path.relative_to(pyd_root).as_posix()] = path
        else:
            out["pydicom-data:" + path.name] = path
    return out


def local_file(name: str) -> Path:
    """One named test file, local only."""
    return Path(pydicom.data.get_testdata_file(name, download=False))
