"""Image preprocessing of HuatuoGPT-Vision in numpy and PIL, identical to the official code.

The official `cli.py` opens images as RGB, pads them to a square on the CLIP mean colour
(LLaVA `expand2square`, `image_aspect_ratio: pad`) and hands them to transformers 4.x's slow
`CLIPImageProcessor`: PIL bicubic resize of the shortest edge, centre crop, rescale by 1/255 and
normalise. The workstation runtime has neither torch nor transformers, so this module redoes those
steps with the same PIL calls and the same arithmetic order (float64 rescale, float32 normalise);
the tests compare it with transformers' PIL-backend processor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huatuo_cli.errors import HuatuoError

#: transformers' PILImageResampling values, as preprocessor_config.json stores them
#: The preprocessing this module implements, by the name a bundle's manifest gives
#: (`vision.preprocess`): "llava-pad" pads to square on the mean colour, resizes the shortest edge,
#: centre-crops and normalises, as LLaVA-1.5's `image_aspect_ratio: pad` does.
#: "qwen-vl-dynamic" keeps the aspect ratio and resizes to multiples of 28 within the checkpoint's pixel
#: limits, as Qwen2-VL's processor does (`huatuo_cli.engine.qwen_vision`).
QWEN_PREPROCESS = "qwen-vl-dynamic"
PREPROCESSING = ("llava-pad", QWEN_PREPROCESS)
RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
             3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    """Per-channel values (RGB) from a preprocessor config."""
    r, g, b = (float(x) for x in values)
    return r, g, b


@dataclass(frozen=True)
class PreprocessConfig:
    """The fields of a CLIP `preprocessor_config.json` that change pixels."""

    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    shortest_edge: int
    crop_height: int
    crop_width: int
    resample: int = 3
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    pad_to_square: bool = True  # LLaVA image_aspect_ratio "pad"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, pad_to_square: bool = True) -> PreprocessConfig:
        size = raw.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if "shortest_edge" not in size:
            raise HuatuoError(f"preprocessor size {size} is not supported (CLIP uses shortest_edge)")
        crop = raw.get("crop_size", {"height": size["shortest_edge"], "width": size["shortest_edge"]})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        resample = int(raw.get("resample", 3))
        if resample not in RESAMPLE:
            raise HuatuoError(f"unknown resample mode {resample} in preprocessor config")
        return cls(
            image_mean=_triple(raw["image_mean"]),
            image_std=_triple(raw["image_std"]),
            shortest_edge=int(size["shortest_edge"]),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            resample=resample,
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            do_resize=bool(raw.get("do_resize", True)),
            do_center_crop=bool(raw.get("do_center_crop", True)),
            do_rescale=bool(raw.get("do_rescale", True)),
            do_normalize=bool(raw.get("do_normalize", True)),
            pad_to_square=pad_to_square,
        )

    @classmethod
    def from_file(cls, path: Path | str, **kwargs: Any) -> PreprocessConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise HuatuoError(f"cannot read preprocessor config {path.name}: {exc}") from exc

    @property
    def background(self) -> tuple[int, int, int]:
        """LLaVA's padding colour: `tuple(int(x * 255) for x in image_mean)` (truncation, not rounding)."""
        r, g, b = (int(x * 255) for x in self.image_mean)
        return r, g, b


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad to a square, the original centred (LLaVA `expand2square`, same integer offsets)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _resize_shortest_edge(image: Image.Image, size: int, resample: int) -> Image.Image:
    """transformers' `get_resize_output_image_size(default_to_square=False)`: long edge truncated."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize((new_w, new_h), resample=RESAMPLE[resample], reducing_gap=None)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' `center_crop` on HWC: floor offsets, zero padding where the image is smaller."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        top_pad, left_pad = max(0, (height - h) // 2), max(0, (width - w) // 2)
        canvas = np.zeros((max(h, height), max(w, width), pixels.shape[2]), dtype=pixels.dtype)
        canvas[top_pad:top_pad + h, left_pad:left_pad + w] = pixels
        pixels, h, w = canvas, canvas.shape[0], canvas.shape[1]
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top:top + height, left:left + width]


def prepare_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The geometric steps only: RGB, pad to square, resize, centre crop -> uint8 [H, W, 3].

    Also what llama.cpp's mtmd is given when its mmproj is measured (same pixels, its own maths).
    """
    image = image.convert("RGB")  # the official CLI opens every image with .convert('RGB')
    if config.pad_to_square:
        image = expand2square(image, config.background)
    if config.do_resize:
        image = _resize_shortest_edge(image, config.shortest_edge, config.resample)
    pixels = np.asarray(image)
    if config.do_center_crop:
        pixels = _center_crop(pixels, config.crop_height, config.crop_width)
    return np.ascontiguousarray(pixels)


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """One image -> float32 [3, H, W], as the official code computes `pixel_values[0]`."""
    pixels = prepare_image(image, config)
    out = pixels.astype(np.float32)
    if config.do_rescale:
        out = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, dtype=np.float32)
        std = np.asarray(config.image_std, dtype=np.float32)
        out = ((out - mean) / std).astype(np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess(images: Sequence[Image.Image], config: PreprocessConfig) -> np.ndarray:
    """Images -> float32 `pixel_values` [N, 3, H, W] for the ONNX vision encoder."""
    if not images:
        raise HuatuoError("no images to preprocess")
    return np.stack([preprocess_image(img, config) for img in images])
