"""Fidelity of an exported image encoder against the PyTorch reference, image by image.

Used by `huatuo convert vision` (fails on tolerance) and `huatuo convert mmproj` (measures only).
The validation images (`huatuo_cli.engine.validation_images`, which the workstation's own gate of
OpenVINO's numbers uses too) go through the runtime's own preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_cli.engine.validation_images import image_cosines, validation_images
from huatuo_cli.extras import require


@dataclass(frozen=True)
class Tolerance:
    """Every image's cosine similarity must reach `min_cosine`; max abs diff is bounded when set."""

    min_cosine: float
    max_abs_diff: float | None = None


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
    return [{"cosine": cos, "max_abs_diff": float(np.abs(e - g).max()), "reference_max_abs": float(np.abs(e).max())}
            for cos, e, g in zip(image_cosines(expected, got), expected.astype(np.float64), got.astype(np.float64), strict=True)]


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
