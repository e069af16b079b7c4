"""Imaging: read DICOM (and PNG/JPEG/TIFF) the way a radiologist's viewer shows it.

Public API: `load_image` -> `RenderedImage` (frames + PHI-free `ImageMeta`), `scan` -> `ScanResult`
(studies -> series -> stacks, representatives, skipped files), `parse_window`, `parse_frame`,
`Rejected` (the `HuatuoError` every non-image file raises), `configure_pydicom` (call once at start-up).
"""

from huatuo_cli.offline import import_pydicom

import_pydicom()  # first: pydicom pulls in an HTTP client (and its socket probe) unless told not to

from huatuo_cli.imaging.dicomio import configure_pydicom  # noqa: E402
from huatuo_cli.imaging.frames import FrameChoice, parse_frame  # noqa: E402
from huatuo_cli.imaging.load import ImageMeta, RenderedImage, load_image, render_dataset  # noqa: E402
from huatuo_cli.imaging.reject import Rejected  # noqa: E402
from huatuo_cli.imaging.scan import Instance, Representative, ScanResult, Series, Skipped, Stack, Study, scan  # noqa: E402
from huatuo_cli.imaging.windows import CT_PRESETS, Window, WindowChoice, parse_window  # noqa: E402

__all__ = [
    "CT_PRESETS", "FrameChoice", "ImageMeta", "Instance", "Rejected", "RenderedImage", "Representative",
    "ScanResult", "Series", "Skipped", "Stack", "Study", "Window", "WindowChoice", "configure_pydicom", "load_image",
    "parse_frame", "parse_window", "render_dataset", "scan",
]
