"""Overlay planes (60xx groups): 1-bit graphics a viewer draws over the image (PS3.3 C.9.2).

Radiologists see them (annotations, ROI outlines, CAD marks) in every viewer; dcmtk's dcm2pnm
draws them too. huatuo draws them the same way: each plane's bits, placed at its Overlay Origin
(1-based row/column) on the frames it applies to (Image Frame Origin, Number of Frames in Overlay),
set to full white. pydicom decodes the bits (`Dataset.overlay_array`).

Previews and report thumbnails always show them, as a viewer would. Whether the model sees them
is a choice (`--overlays model`): by default it does not, because overlays are annotations made
after acquisition (text included), not anatomy, and HuatuoGPT-Vision was trained on images
without them. docs/sr.md records the decision.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

#: where overlays go: "preview" (previews and thumbnails only) or "model" (also what the model sees)
OVERLAY_CHOICES = ("preview", "model")


def overlay_groups(ds: Dataset) -> list[int]:
    """Groups 6000..601E (even) that hold overlay data."""
    # tags only (ds.keys()): iterating the elements would decode every value, and one damaged
    # element elsewhere (a patient name with a broken VR) would then fail an image that renders
    return sorted({int(tag.group) for tag in ds.keys() if 0x6000 <= tag.group <= 0x601E
                   and tag.group % 2 == 0 and tag.element == 0x3000})


def overlay_mask(ds: Dataset, frame: int, rows: int, columns: int) -> np.ndarray | None:
    """Union of every overlay plane that applies to 0-based `frame`, as a rows x columns bool mask
    (None: no overlay there). A plane that cannot be decoded is skipped, never an error: the image
    itself is still what the user asked for."""
    mask = None
    for group in overlay_groups(ds):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bits = np.asarray(ds.overlay_array(group))
        except Exception:  # malformed overlay: a viewer would show the image without it
            continue
        first = int(ds.get((group, 0x0051)).value if (group, 0x0051) in ds else 1) - 1
        planes = bits if bits.ndim == 3 else bits[None]
        index = frame - first
        if not 0 <= index < len(planes):
            continue
        origin = ds.get((group, 0x0050))
        top, left = (int(origin.value[0]) - 1, int(origin.value[1]) - 1) if origin is not None else (0, 0)
        plane = planes[index].astype(bool)
        canvas = np.zeros((rows, columns), dtype=bool)
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(rows, top + plane.shape[0]), min(columns, left + plane.shape[1])
        if r1 > r0 and c1 > c0:
            canvas[r0:r1, c0:c1] = plane[r0 - top:r1 - top, c0 - left:c1 - left]
        mask = canvas if mask is None else mask | canvas
    return mask


def draw(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    """`image` (RGB) with the overlay bits set to white, as viewers draw them."""
    if mask is None or not mask.any() or mask.shape != (image.height, image.width):
        return image
    pixels = np.array(image.convert("RGB"))
    pixels[mask] = 255
    return Image.fromarray(pixels, "RGB")
