"""The image encoder at run time: PIL images -> image embeddings with ONNX Runtime.

Preprocessing is numpy/PIL (`preprocess`), the graph is the one `huatuo convert vision` wrote and
validated, the provider is chosen at run time (`providers`). The provider that actually loaded is
read back from the session and exposed as `.provider`, with `.fallback_note` set when it is not the
one asked for: the user is told, nothing is assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huatuo_cli.engine.llm import ImageEmbeds
from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_cli.engine.prompt import MAX_IMAGES
from huatuo_cli.engine.providers import CUDA, TENSORRT, fallback_note, plan_providers
from huatuo_cli.engine.qwen_vision import GRAPH_INPUTS, QwenVisionConfig, graph_inputs, patchify
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

FP32_NAME = "vision-fp32.onnx"
FP16_NAME = "vision-fp16.onnx"
INT8_NAME = "vision-int8.onnx"
PREPROCESSOR_NAME = "preprocessor_config.json"


def vision_precision(device: str, *, has_fp16: bool) -> str:
    """"fp16" or "fp32": the one rule for which vision graph runs on `device` without a measurement
    (the bundle's roles `vision-fp16`/`vision-fp32`, a vision folder's FP16_NAME/FP32_NAME).

    fp16 only where it exists and suits the device: CUDA without TensorRT (half the memory traffic).
    TensorRT builds its own fp16 engine from the fp32 graph (`trt_fp16_enable`). On the CPU, a
    bundle with other ways to encode (an int8 file, OpenVINO's provider) is measured instead
    (`vision_choice.cpu_vision_way`); fp32 otherwise.
    """
    available = require("onnxruntime").get_available_providers()
    cuda = device == "cuda" or (device == "auto" and CUDA in available and TENSORRT not in available)
    return "fp16" if cuda and has_fp16 else "fp32"


def runs_on_cpu(device: str) -> bool:
    """Whether `device` means ONNX Runtime's CPU provider here (no GPU provider would be tried)."""
    available = require("onnxruntime").get_available_providers()
    return device == "cpu" or (device == "auto" and CUDA not in available and TENSORRT not in available)


def open_session(path: Path, providers: list[Any], threads: int | None) -> Any:
    """An ONNX Runtime session on `providers` (quiet; `threads` intra-op threads when given); a corrupt
    or foreign file is a HuatuoError naming it."""
    ort = require("onnxruntime")
    if any((p[0] if isinstance(p, tuple) else p) in (CUDA, TENSORRT) for p in providers) and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu's providers need the CUDA runtime, cuBLAS and cuDNN, which the GPU artifact installs
        # as NVIDIA's wheels (site-packages/nvidia/...): outside its search path until loaded by ORT itself
        ort.preload_dlls(directory="")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for a corrupt or foreign file
        raise HuatuoError(f"cannot load image encoder {path.name}: {exc}") from exc


class ImageEncoder:
    """`ImageEncoder(path).encode([img, ...]) -> float32 [N, tokens, hidden]`."""

    def __init__(
        self,
        onnx_path: Path | str,
        *,
        device: str = "auto",
        preprocess_config: PreprocessConfig | None = None,
        cache_dir: Path | str | None = None,
        threads: int | None = None,
        device_id: int = 0,
        openvino: bool = False,
    ) -> None:
        """`cache_dir` is the bundle folder (TensorRT caches go below it); default: the ONNX file's folder.
        `openvino`: OpenVINO's provider before the CPU one, where the device means the CPU (`plan_providers`)."""
        ort = require("onnxruntime")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise HuatuoError(f"image encoder {self.path.name} not found in {self.path.parent}")
        self.config = preprocess_config or PreprocessConfig.from_file(self.path.parent / PREPROCESSOR_NAME)
        self.image_size = self.config.crop_height
        self.plan = plan_providers(ort.get_available_providers(), Path(cache_dir or self.path.parent),
                                   self.image_size, device, device_id=device_id, openvino=openvino, threads=threads)
        if TENSORRT in self.plan.names:
            Path(self.plan.options(TENSORRT)["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        self.session = open_session(self.path, self.plan.providers, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if list(inp.shape[1:]) != [3, self.image_size, self.image_size]:
            raise HuatuoError(
                f"image encoder {self.path.name} expects input {inp.shape}, but the preprocessor makes "
                f"3x{self.image_size}x{self.image_size}")
        self.provider: str = self.session.get_providers()[0]
        self.fallback_note: str | None = fallback_note(self.plan, self.session.get_providers())

    @classmethod
    def from_folder(cls, folder: Path | str, *, device: str = "auto", **kwargs: Any) -> ImageEncoder:
        """Pick the folder's file for the device (`vision_precision`)."""
        folder = Path(folder)
        precision = vision_precision(device, has_fp16=(folder / FP16_NAME).is_file())
        name = FP16_NAME if precision == "fp16" else FP32_NAME
        return cls(folder / name, device=device, **kwargs)

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """Preprocessed float32 [N,3,H,W] -> [N, tokens, hidden], in chunks the TensorRT profile allows."""
        outs = []
        for start in range(0, len(pixel_values), MAX_IMAGES):
            chunk = np.ascontiguousarray(pixel_values[start:start + MAX_IMAGES], dtype=np.float32)
            outs.append(self.session.run(None, {self.input_name: chunk})[0])
        return np.concatenate(outs).astype(np.float32, copy=False)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_pixels(preprocess(images, self.config))


class QwenImageEncoder:
    """Qwen2.5-VL's vision graph (`huatuo_convert.qwen_vision_export`): one image per run, any size.

    `encode` returns each image's embeddings with its merged grid (`ImageEmbeds`), which M-RoPE needs.
    TensorRT is not offered: its engines want fixed shape profiles and this graph's size follows the image.
    """

    def __init__(self, onnx_path: Path | str, config: QwenVisionConfig, *, device: str = "auto",
                 threads: int | None = None, device_id: int = 0) -> None:
        ort = require("onnxruntime")
        self.path, self.config = Path(onnx_path), config
        if not self.path.is_file():
            raise HuatuoError(f"image encoder {self.path.name} not found in {self.path.parent}")
        available = [p for p in ort.get_available_providers() if p != TENSORRT]
        self.plan = plan_providers(available, self.path.parent, 0, device, device_id=device_id)
        self.session = open_session(self.path, self.plan.providers, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names[1:] != list(GRAPH_INPUTS):
            raise HuatuoError(f"image encoder {self.path.name} takes {names}, not a Qwen2.5-VL vision graph's inputs")
        self.input_name = names[0]
        self.provider: str = self.session.get_providers()[0]
        self.fallback_note: str | None = fallback_note(self.plan, self.session.get_providers())

    def encode(self, images: Sequence[Image.Image]) -> list[ImageEmbeds]:
        out = []
        for image in images:
            pixels, grid = patchify(image, self.config)
            feeds = {self.input_name: pixels, **graph_inputs(grid, self.config)}
            rows = np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
            out.append(ImageEmbeds(rows, (grid[1] // self.config.merge_size, grid[2] // self.config.merge_size)))
        return out
