"""Local DICOM test corpora (pydicom's own files and the pydicom-data package), never downloaded."""

from __future__ import annotations

import subprocess
import sys
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


#: Python source that makes `import libjpeg` fail, run before anything imports pydicom: the process
#: then behaves exactly as an install without the optional `dicom-gpl` extra (pylibjpeg-libjpeg),
#: whether or not this environment has it.
WITHOUT_GPL_DECODER = """
import importlib.metadata as _md
import sys
sys.modules["libjpeg"] = None  # `import libjpeg` raises ImportError, importlib.util.find_spec answers None
_entry_points = _md.entry_points
def _without_libjpeg(**params):  # pylibjpeg finds its decoder plugins through entry points
    return _md.EntryPoints(ep for ep in _entry_points(**params) if not ep.value.startswith("libjpeg"))
_md.entry_points = _without_libjpeg
"""


def run_without_gpl_decoder(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter that cannot import the GPL JPEG decoder."""
    return subprocess.run([sys.executable, "-c", WITHOUT_GPL_DECODER + code], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent)
