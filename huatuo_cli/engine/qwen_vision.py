"""Qwen2.5-VL's image side in numpy and PIL: its image processor and the index arrays its vision
graph takes, so that the workstation needs neither torch nor transformers.

The preprocessing is transformers' `Qwen2VLImageProcessorPil` step by step (the tests compare the
two): RGB, `smart_resize` to multiples of patch x merge (28) with the pixel count kept within the
checkpoint's `min_pixels`..`max_pixels`, PIL resampling, rescale (float64) and normalise (float32),
each frame duplicated `temporal_patch_size` times and flattened in merge-block order ->
`pixel_values` [patches, 3 * 2 * 14 * 14] and the grid (1, h, w) in patches.

The tower's data-dependent bookkeeping (which patches share an attention window, the 2D rotary
positions, the order the merger emits) is Python in transformers, so the exported ONNX graph takes
it as inputs, computed here as `Qwen2_5_VisionTransformerPretrainedModel` computes it
(`vision_utils.get_vision_position_ids`, `get_vision_window_index`). One image per graph run: the
full-attention layers then attend over the whole image, the window layers within each window.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huatuo_cli.engine.preprocess import QWEN_PREPROCESS, RESAMPLE
from huatuo_cli.errors import HuatuoError

__all__ = ["QWEN_PREPROCESS", "QwenVisionConfig", "graph_inputs", "merged_grid", "patchify", "smart_resize"]
#: the vision graph's inputs besides `pixel_values`, in order
GRAPH_INPUTS = ("position_ids", "window_index", "reverse_index", "window_ids")
#: transformers' defaults (Qwen2VLImageProcessor; OpenAI CLIP's mean and std)
_DEFAULTS: dict[str, Any] = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280, "patch_size": 14,
                             "temporal_patch_size": 2, "merge_size": 2, "resample": 3, "rescale_factor": 1 / 255,
                             "image_mean": (0.48145466, 0.4578275, 0.40821073),
                             "image_std": (0.26862954, 0.26130258, 0.27577711)}


@dataclass(frozen=True)
class QwenVisionConfig:
    """What changes pixels and windows: the checkpoint's preprocessor config plus the tower's window size."""

    min_pixels: int
    max_pixels: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_size: int = 112  # pixels per attention window side (vision_config.window_size)
    resample: int = 3
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = _DEFAULTS["image_mean"]
    image_std: tuple[float, ...] = _DEFAULTS["image_std"]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, window_size: int = 112) -> QwenVisionConfig:
        """A preprocessor_config.json of either transformers generation: 4.x states `min_pixels` /
        `max_pixels` at the top level, 5.x `size.shortest_edge` / `size.longest_edge` (pixel counts)."""
        size: dict[str, Any] = raw["size"] if isinstance(raw.get("size"), dict) else {}
        min_pixels = raw.get("min_pixels", size.get("shortest_edge", _DEFAULTS["min_pixels"]))
        max_pixels = raw.get("max_pixels", size.get("longest_edge", _DEFAULTS["max_pixels"]))
        resample = int(raw.get("resample", _DEFAULTS["resample"]))
        if resample not in RESAMPLE:
            raise HuatuoError(f"unknown resample mode {resample} in preprocessor config")
        return cls(min_pixels=int(min_pixels), max_pixels=int(max_pixels),
                   patch_size=int(raw.get("patch_size", _DEFAULTS["patch_size"])),
                   temporal_patch_size=int(raw.get("temporal_patch_size", _DEFAULTS["temporal_patch_size"])),
                   merge_size=int(raw.get("merge_size", _DEFAULTS["merge_size"])), window_size=int(window_size),
                   resample=resample, rescale_factor=float(raw.get("rescale_factor", _DEFAULTS["rescale_factor"])),
                   image_mean=tuple(float(x) for x in raw.get("image_mean", _DEFAULTS["image_mean"])),
                   image_std=tuple(float(x) for x in raw.get("image_std", _DEFAULTS["image_std"])))

    @classmethod
    def from_file(cls, path: Path | str, *, window_size: int = 112) -> QwenVisionConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), window_size=window_size)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HuatuoError(f"cannot read preprocessor config {path.name}: {exc}") from exc

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen2-VL's target size: both sides multiples of `factor`, the pixel count within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible (transformers' own rule)."""
    if max(height, width) / min(height, width) > 200:
        raise HuatuoError(f"the image is {width}x{height}: Qwen2.5-VL takes aspect ratios up to 200:1")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white, as transformers' processor and Qwen's own
    `qwen_vl_utils` do (LLaVA's code instead drops the alpha channel: `preprocess.py`)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def merged_grid(image_size: tuple[int, int], config: QwenVisionConfig) -> tuple[int, int]:
    """(rows, cols) of merged patches, i.e. of the image's prompt positions, for a (width, height) image."""
    width, height = image_size
    h, w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    return h // config.factor, w // config.factor


def patchify(image: Image.Image, config: QwenVisionConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (`pixel_values` float32 [patches, 3 * T * P * P], grid (1, h, w) in patches)."""
    image = to_rgb(image)
    h_bar, w_bar = smart_resize(image.height, image.width, config.factor, config.min_pixels, config.max_pixels)
    if (image.width, image.height) != (w_bar, h_bar):
        image = image.resize((w_bar, h_bar), resample=RESAMPLE[config.resample], reducing_gap=None)
    pixels = np.asarray(image).transpose(2, 0, 1)  # CHW, as transformers' PIL backend works
    out = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.image_std, dtype=np.float32)[:, None, None]
    out = ((out - mean) / std).astype(np.float32)
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    gh, gw = h_bar // p, w_bar // p
    blocks = out.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
    return np.ascontiguousarray(frames.reshape(gh * gw, 3 * t * p * p)), (1, gh, gw)


def graph_inputs(grid: tuple[int, int, int], config: QwenVisionConfig) -> dict[str, np.ndarray]:
    """The vision graph's index inputs for one image of `grid` (1, h, w) patches.

    - `position_ids` [N, 2]: each patch's (row, col), patches in merge-block order (rotary angles);
    - `window_index` [N/4]: the merge blocks in window order (the order the blocks run in);
    - `reverse_index` [N/4]: its inverse (the merger's output back in raster order);
    - `window_ids` [N]: the attention window of each patch in window order (window layers attend
      only within one window; transformers passes the same partition as `cu_window_seqlens`).
    """
    t, h, w = grid
    if t != 1:
        raise ValueError("one image (grid t = 1) per graph run")
    m = config.merge_size
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    blocks = (h // m, m, w // m, m)
    position_ids = np.stack([rows.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1),
                             cols.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)], axis=-1).astype(np.int64)
    side = config.window_size // m // config.patch_size  # merged blocks per window side
    llm_h, llm_w = h // m, w // m
    pad_h, pad_w = side - llm_h % side, side - llm_w % side
    index = np.full((llm_h + pad_h, llm_w + pad_w), -1, dtype=np.int64)
    index[:llm_h, :llm_w] = np.arange(llm_h * llm_w).reshape(llm_h, llm_w)
    n_h, n_w = (llm_h + pad_h) // side, (llm_w + pad_w) // side
    windows = index.reshape(n_h, side, n_w, side).transpose(0, 2, 1, 3).reshape(n_h * n_w, side * side)
    window_of_block = np.repeat(np.arange(n_h * n_w), side * side)[windows.reshape(-1) >= 0]
    window_index = windows.reshape(-1)[windows.reshape(-1) >= 0]
    return {
        "position_ids": position_ids,
        "window_index": window_index,
        "reverse_index": np.argsort(window_index).astype(np.int64),
        "window_ids": np.repeat(window_of_block, m * m).astype(np.int64),
    }
