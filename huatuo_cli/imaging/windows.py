"""Which window a grayscale image is shown with, and the one parser for the `--window` option.

A window option is one of
  `auto`                      the file's first VOI (window or VOI LUT); else a modality preset;
                              else robust percentiles of the non-padding pixels
  a preset name               `lung`, `mediastinum`, `abdomen`, `liver`, `bone`, `brain`,
                              `subdural`, `stroke`, `temporal-bone`, `soft-tissue` (CT only, HU)
  `C,W`                       explicit centre and width in modality units (HU for CT)
  three of the above, `/`-separated, e.g. `lung/mediastinum/bone`: a composite with one
                              window per colour channel (R/G/B), grayscale images only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from huatuo_cli.errors import HuatuoError


@dataclass(frozen=True)
class Window:
    """A VOI window: centre and width in modality units, with its VOI LUT function."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2)
    name: str = ""  # preset name, or where it came from ("file", "percentiles")

    def label(self) -> str:
        """Short PHI-free text for metadata and tables, e.g. 'lung (C=-600 W=1500)'."""
        cw = f"C={round(self.center, 1):g} W={round(self.width, 1):g}"
        fn = "" if self.function == "LINEAR" else f" {self.function}"
        return f"{self.name} ({cw}{fn})" if self.name else f"{cw}{fn}"


#: CT presets (W/L in HU), docs/dicom.md (Radiopaedia "Windowing (CT)")
CT_PRESETS: dict[str, Window] = {
    name: Window(center=level, width=width, name=name)
    for name, (width, level) in {
        "brain": (80, 40),
        "subdural": (200, 75),
        "stroke": (40, 40),
        "temporal-bone": (2800, 600),
        "soft-tissue": (380, 40),
        "lung": (1500, -600),
        "mediastinum": (350, 50),
        "abdomen": (400, 50),
        "liver": (150, 30),
        "bone": (1800, 400),
    }.items()
}
_ALIASES = {"head-soft-tissue": "soft-tissue", "softtissue": "soft-tissue", "temporalbone": "temporal-bone"}

#: CT BodyPartExamined -> the preset `auto` uses when the file carries no window
_CT_BODY_PRESET = {
    "HEAD": "brain", "BRAIN": "brain", "SKULL": "brain",
    "CHEST": "mediastinum", "THORAX": "mediastinum", "LUNG": "mediastinum",
}
_CT_DEFAULT_PRESET = "abdomen"


@dataclass(frozen=True)
class WindowChoice:
    """A parsed `--window` value: no windows means `auto`; three means an R/G/B composite."""

    text: str
    windows: tuple[Window, ...] = ()

    @property
    def is_auto(self) -> bool:
        return not self.windows

    @property
    def is_composite(self) -> bool:
        return len(self.windows) == 3


AUTO = WindowChoice("auto")


def _parse_one(part: str) -> Window:
    key = part.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key in CT_PRESETS:
        return CT_PRESETS[key]
    if "," in key:
        try:
            center, width = (float(x) for x in key.split(","))
        except ValueError:
            pass
        else:
            if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
                raise HuatuoError(f"window width must be at least 1, got {part.strip()!r}")
            return Window(center=center, width=width)
    raise HuatuoError(
        f"unknown window {part.strip()!r}",
        hint="use auto, C,W (e.g. 40,400), one of " + ", ".join(CT_PRESETS)
        + ", or three of them separated by '/' for an R/G/B composite",
    )


def parse_window(text: str | WindowChoice | None) -> WindowChoice:
    """Parse a window option string (the CLI and the library share this one parser)."""
    if isinstance(text, WindowChoice):
        return text
    if text is None or text.strip().lower() in ("", "auto"):
        return AUTO
    parts = text.split("/")
    if len(parts) not in (1, 3):
        raise HuatuoError(
            f"a composite window needs exactly three parts (R/G/B), got {len(parts)}",
            hint="for example lung/mediastinum/bone",
        )
    return WindowChoice(text.strip(), tuple(_parse_one(p) for p in parts))


def modality_preset(modality: str, body_part: str) -> Window | None:
    """The preset `auto` falls back to for a file without a window (CT only: HU are absolute)."""
    if modality != "CT":
        return None
    return CT_PRESETS[_CT_BODY_PRESET.get(body_part.upper(), _CT_DEFAULT_PRESET)]


def percentile_window(values: np.ndarray, mask: np.ndarray | None = None) -> Window:
    """A window spanning the 0.5th..99.5th percentile of the non-padding values.

    Sub-sampled to about 250k values: percentiles of a 2k x 2k radiograph do not need all 4M.
    """
    flat = values[~mask] if mask is not None and mask.any() else values.ravel()
    if flat.size == 0:
        flat = values.ravel()
    step = max(1, flat.size // 250_000)
    lo, hi = np.percentile(flat[::step], [0.5, 99.5])
    if hi - lo < 1:
        lo, hi = float(flat.min()), float(flat.max())
    width = max(float(hi - lo), 1.0)
    return Window(center=float(lo) + width / 2, width=width, name="percentiles")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Map modality values to [0, 1] with the window's VOI LUT function (PS3.3 C.11.2.1.2/3)."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.asarray(np.clip(values * np.float32(1.0 / w) + np.float32(0.5 - c / w), 0.0, 1.0))
    w1 = max(w - 1.0, 1e-6)
    scale = np.float32(1.0 / w1)
    offset = np.float32(0.5 - (c - 0.5) / w1)
    return np.asarray(np.clip(values * scale + offset, 0.0, 1.0))
