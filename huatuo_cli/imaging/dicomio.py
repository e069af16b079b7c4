"""Open a path as DICOM, with or without the 128-byte preamble, and never mistake text for DICOM.

`pydicom.dcmread(force=True)` will "parse" any file, so it is only used when the first bytes
look like a DICOM data element of group 0002 or 0008 (explicit or implicit VR, either byte
order): that is how every preamble-less file a PACS export or an old modality writes begins,
and what a text file, a JSON or a PNG never does.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from huatuo_cli.imaging.reject import Rejected


def configure_pydicom() -> None:
    """Turn off pydicom's reading validation, process-wide: its warnings quote element values
    (UIDs, names) on stderr, and never PHI on a console. pydicom keeps this setting global and
    validates lazily (when an element is first accessed, long after `dcmread`), so it cannot be
    scoped to one read; it is set explicitly at start-up instead (the `huatuo` command group),
    never as a side effect of an import. Programs using `huatuo_cli.imaging` as a library call it
    once themselves."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

#: groups a preamble-less DICOM data set starts with (file meta, identifying)
_FIRST_GROUPS = {0x0002, 0x0008}


def has_preamble(head: bytes) -> bool:
    """The Part 10 signature: 128 bytes of preamble then 'DICM'."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_raw_dicom(head: bytes) -> bool:
    """Whether a file without preamble starts like a DICOM data set (see module docstring)."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group in _FIRST_GROUPS and element < 0x0100:
            vr = head[4:6]
            explicit = vr.isalpha() and vr.isupper()
            implicit_length = struct.unpack(order + "I", head[4:8])[0]
            if explicit or implicit_length < 0x10000:
                return True
    return False


def not_an_image(head: bytes) -> Rejected:
    """The rejection for a file that is neither DICOM nor a readable picture (archives named)."""
    if head[:2] == b"\x1f\x8b" or head[:4] == b"PK\x03\x04":
        return Rejected("archive", "not an image: a compressed archive (gzip or zip); unpack it first")
    return Rejected("not-dicom", "not a DICOM file and not a PNG, JPEG or TIFF image")


def is_dicom_file(path: Path) -> bool:
    """Cheap sniff (reads 132 bytes) used by the folder scan and by `load_image`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return has_preamble(head) or looks_like_raw_dicom(head)


def read_head(path: Path, size: int = 132) -> bytes:
    """The first bytes of a file (enough for the DICOM preamble); an unreadable file is `Rejected`."""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError as exc:
        raise Rejected("unreadable", f"cannot open the file ({exc.strerror or 'I/O error'})") from None


def read_dicom(path: Path, *, headers_only: bool = False) -> Dataset:
    """Read a DICOM file; raise `Rejected` (not a pydicom exception) when it cannot be read.

    With `headers_only` the pixel data is not read (`stop_before_pixels`), which is what the
    folder scan needs. A missing transfer syntax in the file meta is filled in from the encoding
    pydicom detected, so that decoding still works (old files written without file meta).
    """
    head = read_head(path)
    preamble = has_preamble(head)
    if not preamble and not looks_like_raw_dicom(head):
        raise not_an_image(head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=not preamble, stop_before_pixels=headers_only)
        except (EOFError, struct.error):
            raise Rejected("truncated", "truncated file: the DICOM header ends early") from None
        except Exception:  # pydicom raises many types on garbage; the reason for the user is the same
            raise Rejected("corrupt", "corrupt DICOM header: the file cannot be parsed") from None
    if any("end of file" in str(w.message).lower() for w in caught):
        raise Rejected("truncated", "truncated file: the data ends before the header says it should")
    if len(ds) == 0:
        raise Rejected("not-dicom", "not a DICOM image: the file holds no DICOM data elements")
    _fill_transfer_syntax(ds)
    return ds


def _fill_transfer_syntax(ds: Dataset) -> None:
    """Set file_meta.TransferSyntaxUID from the detected encoding where the file has none."""
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
