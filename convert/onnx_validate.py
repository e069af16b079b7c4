"""Fidelity of an exported image encoder against the PyTorch reference, image by image.

Used by `huatuo convert vision` (fails on tolerance) and `huatuo convert mmproj` (measures only).
The validation images are built here, deterministically, to cover what real inputs look like to
the encoder: noise (every frequency), a smooth rendered gradient with shapes (natural-image-like
statistics), a wide non-square image (padding by expand2square) and a grayscale one (the common
case for radiographs). They go through the runtime's own preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_cli.extras import require


@dataclass(frozen=True)
class Tolerance:
    """Every image's cosine similarity must reach `min_cosine`; max abs diff is bounded when set."""

    min_cosine: float
    max_abs_diff: float | None = None


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


def validation_pixels(preprocessor: dict, size: int) -> np.ndarray:
    """The validation images as float32 pixel_values [N,3,size,size], via the runtime preprocessing."""
    config = PreprocessConfig.from_dict(preprocessor)
    return preprocess([img for _, img in validation_images(size)], config)


def image_names() -> list[str]:
    return [name for name, _ in validation_images(28)]


def embedding_metrics(expected: np.ndarray, got: np.ndarray) -> list[dict]:
    """Per image: cosine similarity of the flattened [tokens, hidden] embeddings, max abs diff."""
    if expected.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {expected.shape}, got {got.shape}")
    out = []
    for e, g in zip(expected.astype(np.float64), got.astype(np.float64), strict=True):
        e, g = e.ravel(), g.ravel()
        cos = float(e @ g / (np.linalg.norm(e) * np.linalg.norm(g)))
        out.append({"cosine": cos, "max_abs_diff": float(np.abs(e - g).max()),
                    "reference_max_abs": float(np.abs(e).max())})
    return out


def run_onnx_cpu(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run an ONNX encoder on the CPU provider (the reproducible one) and return float32 embeddings."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: pixels})[0], dtype=np.float32)


def validate_onnx(path: Path, pixels: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> dict:
    """A JSON-ready report for one ONNX file; `passed` is False when any image is out of tolerance."""
    metrics = embedding_metrics(expected, run_onnx_cpu(path, pixels))
    names = image_names()
    images = [{"name": names[i] if i < len(names) else f"image{i}", **m} for i, m in enumerate(metrics)]
    min_cos = min(m["cosine"] for m in metrics)
    max_abs = max(m["max_abs_diff"] for m in metrics)
    passed = min_cos >= tolerance.min_cosine and (tolerance.max_abs_diff is None or max_abs <= tolerance.max_abs_diff)
    return {"passed": passed, "min_cosine": min_cos, "max_abs_diff": max_abs,
            "tolerance": asdict(tolerance), "images": images}
