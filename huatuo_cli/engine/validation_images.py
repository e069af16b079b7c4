"""The validation images: the same on every machine, for every check of an image encoder's numbers.

Built deterministically to cover what real inputs look like to the encoder: noise (every
frequency), a smooth rendered gradient with shapes (natural-image-like statistics), a wide
non-square image (padding by expand2square) and a grayscale one (the common case for radiographs).
Conversion holds every exported vision file to its bound against PyTorch on them
(`huatuo_convert.onnx_validate`); the workstation holds a runtime whose numbers it cannot know in
advance (OpenVINO's execution provider, `engine.vision_choice`) to the same bound on the same images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def validation_images(size: int = 336) -> list[tuple[str, Image.Image]]:
    """(name, image) pairs, the same on every machine."""
    rng = np.random.default_rng(20240628)
    noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    grad = np.stack([255 * x, 255 * y, 255 * (1 - x) * (1 - y)], axis=-1).astype(np.uint8)
    gradient = Image.fromarray(grad)
    draw = ImageDraw.Draw(gradient)
    draw.ellipse((size // 5, size // 4, size * 3 // 4, size * 4 // 5), fill=(230, 230, 220), outline=(20, 20, 20))
    draw.rectangle((size // 10, size // 10, size // 3, size // 3), fill=(40, 90, 160))
    wide = Image.fromarray(rng.integers(0, 256, (size // 2, size + size // 3, 3), dtype=np.uint8)).resize(
        (size * 3 // 2, size * 3 // 4), Image.Resampling.BILINEAR)
    gray = Image.fromarray((255 * np.hypot(x - 0.5, y - 0.3)).clip(0, 255).astype(np.uint8), mode="L")
    return [("noise", noise), ("gradient", gradient), ("wide", wide), ("grayscale", gray)]


def image_cosines(expected: np.ndarray, got: np.ndarray) -> list[float]:
    """Per image: the cosine similarity of its flattened [tokens, hidden] embeddings (float64)."""
    if expected.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {expected.shape}, got {got.shape}")
    out = []
    for e, g in zip(expected.astype(np.float64), got.astype(np.float64), strict=True):
        e, g = e.ravel(), g.ravel()
        out.append(float(e @ g / (np.linalg.norm(e) * np.linalg.norm(g))))
    return out
