"""Local DICOM test corpora (pydicom's own files and the pydicom-data package), never downloaded."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from PIL import Image
from pydicom.uid import generate_uid


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


def _slice(base, study, series, z, number, *, echo=None, localizer=False, orientation=(1, 0, 0, 0, 1, 0), position=True):
    ds = base.copy()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = list(orientation)
    if position:
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    elif "ImagePositionPatient" in ds:
        del ds.ImagePositionPatient
    if echo is not None:
        ds.EchoNumbers = echo
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    ds.SliceLocation = float(z)
    return ds


def build_folder(root: Path) -> dict:
    base = pydicom.dcmread(local_file("CT_small.dcm"))
    study, axial, echoes, nopos = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    rng = random.Random(4)
    zs = list(range(9))
    numbers = list(range(1, 10))
    rng.shuffle(numbers)  # InstanceNumber runs against position
    names = [f"x{rng.randrange(10**6):06d}" for _ in zs]  # file names say nothing about order
    (root / "a" / "deep").mkdir(parents=True)
    for z, number, name in zip(zs, numbers, names, strict=True):
        _slice(base, study, axial, z * 2.5, number).save_as(root / "a" / "deep" / name)
    _slice(base, study, axial, 0, 99, localizer=True, orientation=(0, 1, 0, 0, 0, -1)).save_as(root / "a" / "scout.dcm")
    for z in range(3):
        for echo in (1, 2):
            _slice(base, study, echoes, z, 10 * echo + z, echo=echo).save_as(root / f"e{echo}_{z}.dcm")
    for n in (3, 1, 2):
        _slice(base, study, nopos, 0, n, position=False).save_as(root / f"np{n}.dcm")
    sr = pydicom.dcmread(local_file("test-SR.dcm"))
    sr.save_as(root / "report.dcm")
    (root / "notes.txt").write_text("not an image")
    (root / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "photos" / "p1.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "photos" / "p2.jpg")
    return {"study": study, "axial": axial, "echoes": echoes, "nopos": nopos, "numbers": numbers}
