"""Turn decoded pixel values into the 8-bit RGB a viewer (and the model) shows.

Grayscale follows PS3.4 N.2: mask PixelPaddingValue -> Modality LUT (sequence, else
rescale) -> VOI (window with LINEAR / LINEAR_EXACT / SIGMOID, or VOI LUT sequence) ->
MONOCHROME1 inversion -> uint8. pydicom supplies the LUT steps; it neither masks padding nor
inverts MONOCHROME1 nor normalises VOI output to 0..255, which is done here. Colour: RGB (pydicom
already converted YBR), PALETTE COLOR through `apply_color_lut`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from huatuo_cli.imaging.reject import Rejected
from huatuo_cli.imaging.windows import Window, WindowChoice, apply_window, modality_preset, percentile_window


def padding_mask(arr: np.ndarray, view: Dataset) -> np.ndarray | None:
    """Stored values that are padding (outside the scanned field), or None if the file declares none."""
    value = view.get("PixelPaddingValue")
    if value is None:
        return None
    limit = view.get("PixelPaddingRangeLimit")
    if limit is None:
        return np.asarray(arr == value)
    lo, hi = sorted((value, limit))
    return np.asarray((arr >= lo) & (arr <= hi))


_F32_MAX = float(np.finfo(np.float32).max)


def modality_values(arr: np.ndarray, view: Dataset) -> np.ndarray:
    """Stored values -> modality units (HU for CT) as float32."""
    if "ModalityLUTSequence" in view:
        return np.asarray(apply_modality_lut(arr, view), dtype=np.float32)
    values = arr.astype(np.float32)
    slope, intercept = float(view.get("RescaleSlope") or 1.0), float(view.get("RescaleIntercept") or 0.0)
    largest = float(np.abs(values).max()) if values.size else 0.0
    in_range = math.isfinite(slope) and math.isfinite(intercept) and abs(slope) <= _F32_MAX
    if not in_range or abs(slope) * largest + abs(intercept) > _F32_MAX:
        # e.g. RescaleSlope 1e308: no real modality unit is that large; refuse instead of an overflow warning
        raise ValueError("rescale slope/intercept out of range")
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _first(value: Any) -> Any:
    """First value of a possibly multi-valued element."""
    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value


def file_window(view: Dataset) -> Window | None:
    """The file's first window (centre/width), if it has a usable one."""
    centers, widths = view.get("WindowCenter"), view.get("WindowWidth")
    if centers is None or widths is None or centers == "" or widths == "":
        return None
    try:
        center, width = float(_first(centers)), float(_first(widths))
    except (TypeError, ValueError):
        return None
    if not width >= 1:
        return None
    function = str(view.get("VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    return Window(center=center, width=width, function=function, name="file")


def _voi_lut(values: np.ndarray, view: Dataset) -> np.ndarray:
    """Apply the file's first VOI LUT sequence item, normalised to [0, 1]."""
    item = view.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2]) or 16
    out = apply_voi(np.rint(values).astype(np.int64), view, index=0)
    top = float(2**bits - 1)
    return np.asarray(np.clip(np.asarray(out, dtype=np.float32) / top, 0.0, 1.0))


def _auto(values: np.ndarray, view: Dataset, mask: np.ndarray | None, body_part: str) -> tuple[np.ndarray, str]:
    window = file_window(view)
    if window is None and view.get("VOILUTSequence"):
        return _voi_lut(values, view), "file VOI LUT"
    if window is None:
        window = modality_preset(str(view.get("Modality", "")), body_part)
    if window is None:
        window = percentile_window(values, mask)
    return apply_window(values, window), window.label()


def render_gray(
    arr: np.ndarray, view: Dataset, choice: WindowChoice, *, body_part: str = ""
) -> tuple[np.ndarray, str]:
    """One grayscale frame -> (H x W x 3 uint8, text of the window used)."""
    mask = padding_mask(arr, view)
    values = modality_values(arr, view)
    is_ct = str(view.get("Modality", "")) == "CT"
    channels: list[np.ndarray] = []
    labels: list[str] = []
    if choice.is_auto:
        y, label = _auto(values, view, mask, body_part)
        channels, labels = [y], [label]
    else:
        for window in choice.windows:
            if window.name and not is_ct:  # HU presets mean nothing on MR, CR, US...
                y, label = _auto(values, view, mask, body_part)
                label = f"{label}; preset {window.name} needs CT"
            else:
                y, label = apply_window(values, window), window.label()
            channels.append(y)
            labels.append(label)
    invert = str(view.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    planes = [_to_uint8(y, invert, mask) for y in channels]
    out = np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
    text = labels[0] if len(labels) == 1 else "R/G/B " + " | ".join(labels)
    return out, text


def _to_uint8(y: np.ndarray, invert: bool, mask: np.ndarray | None) -> np.ndarray:
    """[0, 1] display values -> uint8, MONOCHROME1 inverted, padding black (done on one plane)."""
    if invert:
        y = 1.0 - y
    out = np.rint(y * 255.0).astype(np.uint8)
    if mask is not None:
        out[mask] = 0
    return out


def render_color(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """One colour frame (RGB after pydicom's YBR conversion, or PALETTE COLOR) -> H x W x 3 uint8."""
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
        except Exception:  # malformed palette descriptors raise assorted errors inside pydicom
            raise Rejected("corrupt", "corrupt palette: the PALETTE COLOR lookup tables cannot be applied") from None
        if rgb.dtype != np.uint8:
            rgb = rgb >> 8 if rgb.max() > 255 else rgb  # 16-bit LUT entries: keep the high byte
        return np.ascontiguousarray(rgb.astype(np.uint8))
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    scaled = arr.astype(np.float64) * (255.0 / float(2**bits - 1))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
