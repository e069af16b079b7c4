"""Damaged DICOM files made from pydicom's test files by one targeted change each.

What a hospital export really contains now and then: a byte flipped in a header, a compressed
frame whose data makes a native decoder panic, a file cut short. Each maker writes a new file
(fresh UIDs, so it is a study of its own) and returns its path.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def fresh_copy(name: str, dest: Path) -> Path:
    """A copy of a pydicom test file with new Study/Series/SOP Instance UIDs (its own study)."""
    ds = pydicom.dcmread(pydicom_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def unknown_vr(dest: Path, element: tuple[int, int, bytes] = (0x0008, 0x0060, b"CS")) -> Path:
    """CT_small with the VR of one element (default Modality, CS) changed to 'QQ', a VR no
    standard defines: pydicom reads the file, then raises NotImplementedError when the element is
    first used (Modality: by the folder scan; RescaleSlope (0028,1053) DS: only when rendering)."""
    fresh_copy("CT_small.dcm", dest)
    data = bytearray(dest.read_bytes())
    group, number, vr = element
    at = data.index(struct.pack("<HH", group, number) + vr)
    data[at + 4:at + 6] = b"QQ"
    dest.write_bytes(bytes(data))
    return dest


RESCALE_SLOPE = (0x0028, 0x1053, b"DS")


def rle_panic(dest: Path) -> Path:
    """MR_small_RLE with one byte of its first RLE segment changed (232 -> 149) so that a literal
    run overshoots the output: pylibjpeg-rle (Rust) panics, raising pyo3's PanicException, a
    BaseException."""
    fresh_copy("MR_small_RLE.dcm", dest)
    data = bytearray(dest.read_bytes())
    header = data.index(struct.pack("<3I", 2, 64, 1948))  # RLE header: 2 segments at 64 and 1948
    assert data[header + 141] == 232
    data[header + 141] = 149
    dest.write_bytes(bytes(data))
    return dest


def truncated_pixels(dest: Path, *, name: str = "CT_small.dcm", cut: int = 4000) -> Path:
    """A file whose header parses but whose pixel data is cut short."""
    fresh_copy(name, dest)
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) - cut])
    return dest


def good_copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    return dest
