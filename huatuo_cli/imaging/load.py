"""One entry point from a path to what the model sees: `load_image(path) -> RenderedImage`.

DICOM (with or without preamble or extension) goes through the reader, the rejection checks and
the viewer pipeline of `render`; PNG, JPEG and TIFF through Pillow. Every failure a user can
meet is a `HuatuoError` (mostly its subclass `Rejected`) whose message names no patient data.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from huatuo_cli.errors import HuatuoError, is_data_failure
from huatuo_cli.imaging.caveats import burned_in, is_lossy
from huatuo_cli.imaging.dicomio import is_dicom_file, not_an_image, read_dicom, read_head
from huatuo_cli.imaging.frames import FrameChoice, frame_indices, frame_view, number_of_frames, parse_frame
from huatuo_cli.imaging.overlays import draw, overlay_mask
from huatuo_cli.imaging.reject import (
    Rejected,
    check_header,
    check_image_attributes,
    check_transfer_syntax,
    decode_failure,
    header_failure,
    syntax_name,
)
from huatuo_cli.imaging.render import render_color, render_gray
from huatuo_cli.imaging.windows import WindowChoice, apply_window, parse_window, percentile_window

_COLOR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR"}


@dataclass(frozen=True)
class ImageMeta:
    """PHI-free facts about a rendered image (safe to print, log and put in reports)."""

    source: str  # "dicom", "png", "jpeg", "tiff", ...
    modality: str  # DICOM Modality ("CT"); "" for plain images
    body_part: str  # BodyPartExamined, a code string ("CHEST"); "" when absent
    photometric: str  # PhotometricInterpretation ("MONOCHROME1") or the Pillow mode
    rows: int
    columns: int
    number_of_frames: int
    frames: tuple[int, ...]  # 0-based indices of the frames rendered, in order
    transfer_syntax: str  # name, e.g. "JPEG 2000 Image Compression"; the format for plain images
    window: str  # e.g. "lung (C=-600 W=1500)", "file (C=40 W=400)", "colour (no window)"
    lossy: bool = False  # lossy-compressed source (imaging.caveats)
    burned_in: str = "no"  # "yes", "possible" or "no": burned-in annotation (imaging.caveats)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RenderedImage:
    """Rendered frames (8-bit RGB, what the model sees) and their metadata."""

    frames: list[Image.Image] = field(default_factory=list)
    meta: ImageMeta | None = None
    #: per frame, the overlay (60xx) bits a viewer draws over it, or None (imaging.overlays)
    overlays: list[np.ndarray | None] = field(default_factory=list)


def code_string(value: object) -> str:
    """A code-string attribute, sanitised so free text cannot leak through it."""
    text = str(value or "").strip().upper()
    return text if re.fullmatch(r"[A-Z0-9 _\-]{0,16}", text) else ""


def load_image(path: str | Path, *, window: str | WindowChoice = "auto", frame: FrameChoice | str = "mid",
               overlays: str = "preview") -> RenderedImage:
    """Render a DICOM, PNG, JPEG or TIFF file; raise HuatuoError with a PHI-free reason otherwise."""
    path = Path(path)
    choice = parse_window(window)
    frame = parse_frame(frame)
    if not path.is_file():
        raise HuatuoError("no such file" if not path.exists() else "not a regular file")
    if is_dicom_file(path):
        return render_dataset(read_dicom(path), window=choice, frame=frame, overlays=overlays)
    return _load_plain(path, choice, frame)


def render_dataset(ds: Dataset, *, window: str | WindowChoice = "auto", frame: FrameChoice | str = "mid",
                   overlays: str = "preview") -> RenderedImage:
    """Render an already-read DICOM dataset (pixel data included).

    Overlay planes are returned beside the frames (`RenderedImage.overlays`) and, with
    `overlays="model"`, also drawn into the frames themselves (imaging.overlays).

    A header value that cannot be used (e.g. RescaleSlope "ab") is a corrupt file for the user,
    not a crash; the message never quotes the value (it could be anything, PHI included).
    """
    choice = parse_window(window)
    frame = parse_frame(frame)
    try:
        rendered = _render_dataset(ds, choice, frame)
    except HuatuoError:
        raise
    except (ValueError, TypeError):
        raise Rejected("corrupt", "corrupt header: an image attribute has an invalid value") from None
    except BaseException as exc:  # an element pydicom converts only now (unknown VR, bad length, ...)
        if not is_data_failure(exc):
            raise
        raise header_failure(exc) from None
    assert rendered.meta is not None
    try:
        rendered.overlays = [overlay_mask(ds, i, rendered.meta.rows, rendered.meta.columns) for i in rendered.meta.frames]
    except BaseException as exc:  # a damaged overlay plane: the image is still the image, shown without it
        if not is_data_failure(exc):
            raise
        rendered.overlays = [None] * len(rendered.frames)
    if overlays == "model":
        rendered.frames = [draw(f, m) for f, m in zip(rendered.frames, rendered.overlays, strict=True)]
    return rendered


def _render_dataset(ds: Dataset, choice: WindowChoice, frame: FrameChoice) -> RenderedImage:
    check_header(ds)
    check_image_attributes(ds)
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    check_transfer_syntax(ts)
    n = number_of_frames(ds)
    indices = frame_indices(frame, n)
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").upper()
    if photometric in _COLOR and choice.is_composite:
        raise HuatuoError("a composite (R/G/B) window needs a grayscale image; this one is in colour")
    body_part = code_string(ds.get("BodyPartExamined"))
    frames, labels = [], []
    for array in _decode(ds, indices, n, ts):
        if photometric in _COLOR or array.ndim == 3:
            frames.append(Image.fromarray(render_color(array, ds), "RGB"))
            labels.append("colour (no window)")
        else:
            index = indices[len(frames)]
            rgb, label = render_gray(array, frame_view(ds, index), choice, body_part=body_part)
            frames.append(Image.fromarray(rgb, "RGB"))
            labels.append(label)
    meta = ImageMeta(
        source="dicom",
        modality=code_string(ds.get("Modality")),
        body_part=body_part,
        photometric=photometric,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        number_of_frames=n,
        frames=tuple(indices),
        transfer_syntax=syntax_name(ts),
        window=labels[0] if len(set(labels)) == 1 else "per frame: " + "; ".join(labels),
        lossy=is_lossy(ds),
        burned_in=burned_in(ds),
    )
    return RenderedImage(frames=frames, meta=meta)


def _decode(ds: Dataset, indices: list[int], n: int, ts: str) -> Iterator[np.ndarray]:
    """Decoded arrays of the chosen frames (one decode per frame; all at once for `all`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoder chatter may quote header values
            if len(indices) == n and n > 1:
                stack = pixel_array(ds)
                arrays = [stack[i] for i in range(n)]
            elif n == 1:
                arrays = [pixel_array(ds)]
            else:
                arrays = [pixel_array(ds, index=i) for i in indices]
    except HuatuoError:
        raise
    except BaseException as exc:  # decoder plugins raise assorted types for bad data (a Rust decoder panics)
        if not is_data_failure(exc):
            raise
        raise decode_failure(exc, ts) from None
    for array in arrays:
        if array.ndim == 3 and array.shape[-1] == 3:
            yield array
        elif array.ndim == 2:
            yield array
        else:
            raise Rejected("corrupt", f"cannot render pixel data of shape {array.shape}")


def _load_plain(path: Path, choice: WindowChoice, frame: FrameChoice) -> RenderedImage:
    """PNG / JPEG / TIFF (multi-page TIFF pages are frames)."""
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise not_an_image(read_head(path, 8)) from None
    with image:
        pages = [page.copy() for page in ImageSequence.Iterator(image)]
        fmt = (image.format or "image").lower()
        mode = image.mode
    indices = frame_indices(frame, len(pages))
    frames, labels = [], []
    for i in indices:
        page = pages[i]
        if page.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale needs a window
            values = np.asarray(page, dtype=np.float32)
            if choice.is_composite:
                y = np.stack([apply_window(values, w) for w in choice.windows], axis=-1)
                label = choice.text
            else:
                window = choice.windows[0] if choice.windows else percentile_window(values)
                y = np.repeat(apply_window(values, window)[..., None], 3, axis=-1)
                label = window.label()
            frames.append(Image.fromarray(np.rint(y * 255).astype(np.uint8), "RGB"))
            labels.append(label)
        else:
            frames.append(page.convert("RGB"))
            labels.append("as stored (8-bit)")
    meta = ImageMeta(
        source=fmt,
        modality="",
        body_part="",
        photometric=mode,
        rows=pages[0].height,
        columns=pages[0].width,
        number_of_frames=len(pages),
        frames=tuple(indices),
        transfer_syntax=fmt.upper(),
        window=labels[0],
        lossy=fmt in ("jpeg", "mpo", "webp"),
        burned_in="possible",  # a picture file may be a screenshot with the patient's name on it
    )
    return RenderedImage(frames=frames, meta=meta)
