"""Decide, before and while decoding, that a file is not something the model can look at.

Every rejection is a `Rejected` error (a `HuatuoError`) with a short machine-readable `category`
and a specific, PHI-free message: a radiologist who drops a structured report or a truncated
file into a study folder must learn *which* kind of non-image it was, without the message ever
naming the patient, the file path or a UID.
"""

from __future__ import annotations

import importlib.util

from pydicom.dataset import Dataset
from pydicom.uid import UID

from huatuo_cli.errors import HuatuoError

#: DICOMDIR's Media Storage SOP Class
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: SOP Class UID prefix -> (category, what it is). Longest prefix wins (KOS sits inside SR).
NON_IMAGE_SOP_PREFIXES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.88.59": ("key-object-selection", "a key object selection document (KOS)"),
    "1.2.840.10008.5.1.4.1.1.88.": ("structured-report", "a structured report (SR)"),
    "1.2.840.10008.5.1.4.1.1.11.": ("presentation-state", "a presentation state"),
    "1.2.840.10008.5.1.4.1.1.481.2": ("radiotherapy", "an RT dose object"),
    "1.2.840.10008.5.1.4.1.1.481.3": ("radiotherapy", "an RT structure set"),
    "1.2.840.10008.5.1.4.1.1.481.": ("radiotherapy", "a radiotherapy object (plan, record or treatment data)"),
    "1.2.840.10008.5.1.4.1.1.104.": ("encapsulated-document", "an encapsulated document (PDF, CDA, STL, ...)"),
    "1.2.840.10008.5.1.4.1.1.9.": ("waveform", "a waveform (ECG, audio, haemodynamic)"),
    "1.2.840.10008.5.1.4.1.1.66.4": ("segmentation", "a segmentation (SEG)"),
    "1.2.840.10008.5.1.4.1.1.66.": ("raw-data", "raw data, registration or fiducials"),
    "1.2.840.10008.5.1.4.1.1.66": ("raw-data", "raw data"),
    "1.2.840.10008.5.1.4.1.1.67": ("raw-data", "a real world value mapping"),
    "1.2.840.10008.5.1.4.1.1.68.": ("raw-data", "a surface model"),
    "1.2.840.10008.5.1.4.34.": ("radiotherapy", "a second-generation RT object"),
}
#: RT Image is a real radiograph (portal image): it stays renderable.
RENDERABLE_EXCEPTIONS = {"1.2.840.10008.5.1.4.1.1.481.1"}

#: JPEG processes whose 12-bit variants only the GPL decoder (pylibjpeg-libjpeg) reads
JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}


class Rejected(HuatuoError):
    """This file is not an image we can render; `category` groups reasons for reports."""

    def __init__(self, category: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.category = category

    @property
    def reason(self) -> str:
        """The one-line message without the hint (for tables)."""
        return str(self.args[0])


def header_failure(exc: BaseException) -> Rejected:
    """The rejection for a header pydicom could not read (raised when an element is first used).

    pydicom converts elements lazily, so an unknown VR or a value of the wrong length surfaces as
    NotImplementedError, BytesLengthException, ValueError, ... long after `dcmread` returned. The
    message never quotes the exception: it may hold the element's value.
    """
    if isinstance(exc, (EOFError, OverflowError)) or "end of file" in str(exc).lower():
        return Rejected("truncated", "truncated file: the DICOM header ends early")
    return Rejected("corrupt", "corrupt DICOM header: an element cannot be read (unknown VR or bad length)")


#: short transfer syntax names for tables
_SHORT_SYNTAX = {
    "1.2.840.10008.1.2": "implicit VR LE",
    "1.2.840.10008.1.2.1": "explicit VR LE",
    "1.2.840.10008.1.2.2": "explicit VR BE",
    "1.2.840.10008.1.2.1.99": "deflate",
    "1.2.840.10008.1.2.5": "RLE",
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}


def short_syntax_name(uid: str | None) -> str:
    """A compact transfer syntax name for tables ('JPEG 2000 lossless')."""
    return _SHORT_SYNTAX.get(str(uid or ""), syntax_name(uid))


def syntax_name(uid: str | None) -> str:
    """A transfer syntax as people read it ('JPEG 2000 Image Compression'), never a bare UID."""
    if not uid:
        return "unknown"
    name = UID(str(uid)).name
    return name if name and name != str(uid) else "private/unknown syntax"


def sop_class_rejection(sop_class_uid: str) -> Rejected | None:
    """The rejection for a non-image SOP class, or None when the class may hold an image."""
    uid = str(sop_class_uid)
    if uid in RENDERABLE_EXCEPTIONS:
        return None
    if uid == DICOMDIR_SOP_CLASS:
        return Rejected("dicomdir", "not an image: a DICOMDIR (media index); point at the folder instead")
    for prefix in sorted(NON_IMAGE_SOP_PREFIXES, key=len, reverse=True):
        if uid == prefix or (prefix.endswith(".") and uid.startswith(prefix)):
            category, what = NON_IMAGE_SOP_PREFIXES[prefix]
            return Rejected(category, f"not an image: {what}")
    return None


def check_header(ds: Dataset) -> None:
    """Reject from the header alone (works on a `stop_before_pixels` read): non-image classes, DICOMDIR."""
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise Rejected("dicomdir", "not an image: a DICOMDIR (media index); point at the folder instead")
    sop_class = str(ds.get("SOPClassUID", "") or media_class)
    if sop_class:
        rejection = sop_class_rejection(sop_class)
        if rejection is not None:
            raise rejection


def check_image_attributes(ds: Dataset) -> None:
    """Reject datasets without pixel data or without the attributes needed to decode it."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise Rejected("no-pixel-data", "not an image: the DICOM file has no pixel data")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel") if ds.get(k) in (None, "")]
    if missing:
        raise Rejected(
            "incomplete-attributes",
            f"cannot decode: required image attributes are missing ({', '.join(missing)})",
        )


def check_transfer_syntax(ts_uid: str) -> None:
    """Reject syntaxes no installed decoder plugin handles (video, private, ...)."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts_uid)
    except NotImplementedError:
        raise Rejected(
            "unsupported-syntax",
            f"unsupported transfer syntax: {syntax_name(ts_uid)} (no decoder exists for it)",
        ) from None
    if not decoder.is_available:
        if ts_uid in JPEG_SYNTAXES:
            raise gpl_decoder_missing(ts_uid)
        raise Rejected(
            "unsupported-syntax",
            f"unsupported transfer syntax: {syntax_name(ts_uid)} (no installed decoder plugin reads it)",
        )


def gpl_decoder_installed() -> bool:
    """Whether the optional GPL JPEG decoder (pylibjpeg-libjpeg, module `libjpeg`) is importable."""
    return importlib.util.find_spec("libjpeg") is not None


def gpl_decoder_missing(ts_uid: str) -> Rejected:
    """The rejection for 12-bit/extended JPEG without the optional `dicom-gpl` extra."""
    return Rejected(
        "needs-gpl-extra",
        f"cannot decode {syntax_name(ts_uid)} (12-bit JPEG): it needs the optional GPL decoder "
        "pylibjpeg-libjpeg, which is not installed",
        hint="pip install 'huatuo-cli[dicom-gpl]' (GPLv3; only if your site accepts that licence)",
    )


def decode_failure(exc: BaseException, ts_uid: str) -> Rejected:
    """Turn a decoder exception into a specific, PHI-free rejection (never echoing the exception)."""
    text = str(exc).lower()
    if "less than expected" in text or "truncat" in text or "end of file" in text:
        return Rejected("truncated", "truncated file: the pixel data is shorter than the header says")
    if ts_uid in JPEG_SYNTAXES and not gpl_decoder_installed():
        return gpl_decoder_missing(ts_uid)
    if isinstance(exc, (ValueError, TypeError, AttributeError)) and "invalid literal" in text:
        return Rejected("corrupt", "corrupt header: an image attribute has an invalid value")
    return Rejected(
        "corrupt",
        f"corrupt pixel data: no decoder could read this {syntax_name(ts_uid)} image",
    )
