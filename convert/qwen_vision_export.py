"""Qwen2.5-VL's vision tower + patch merger as one ONNX graph, validated against transformers' own.

transformers computes the tower's bookkeeping in Python from the image grid (which patches share an
attention window, the rotary positions, the merger's output order), which a traced graph would
freeze to one image size. The graph therefore takes it as inputs, computed by the runtime's
`huatuo_cli.engine.qwen_vision.graph_inputs` (one implementation for both sides), and re-expresses
the forward of `Qwen2_5_VisionTransformerPretrainedModel` with the tower's own modules: patch
embedding, blocks in window order with a block-diagonal attention mask on the window layers and
none on the full-attention ones, 2D rotary angles from the tower's `inv_freq`, merger, raster order.
Any image size (multiples of 28) runs; one image per run.

Every file is checked on the CPU provider against `model.visual(pixel_values, grid_thw)` of the
real transformers class for validation images of several sizes and aspect ratios; fp32 and fp16
must pass the family's cosine bound, int8 is kept only if it does.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from huatuo_cli.engine.encoder import FP32_NAME, PREPROCESSOR_NAME
from huatuo_cli.engine.qwen_vision import GRAPH_INPUTS, QWEN_PREPROCESS, QwenVisionConfig, graph_inputs, patchify
from huatuo_cli.extras import require
from huatuo_convert.atomic import atomic_folder, refuse_existing
from huatuo_convert.onnx_export import OPSET, OUTPUT_NAME, VisionExport, derive_files, gate_files
from huatuo_convert.onnx_validate import Tolerance, embedding_metrics, validation_images

PIXELS_NAME = "pixel_values"


def validation_set(config: QwenVisionConfig) -> list[tuple[str, Any]]:
    """The shared validation images at sizes whose grids differ (square, wide, tall, partial windows)."""
    images = validation_images(336)
    tall = images[0][1].resize((140, 392))
    return [*images, ("tall", tall), ("small", images[1][1].resize((60, 44)))]


def _graph_module(visual: Any):
    torch = require("torch")
    blocks, full = visual.blocks, set(visual.fullatt_block_indexes)
    unit = visual.spatial_merge_unit

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class QwenVisionGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual

        def _attention(self, attn, x, cos, sin, bias):
            n = x.shape[0]
            q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q = q.float() * cos + rotate_half(q.float()) * sin
            k = k.float() * cos + rotate_half(k.float()) * sin
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, n, head_dim]
            scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling
            if bias is not None:
                scores = scores + bias
            out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
            return attn.proj(out.transpose(0, 1).reshape(n, -1))

        def forward(self, pixel_values, position_ids, window_index, reverse_index, window_ids):
            x = visual.patch_embed(pixel_values)
            n = x.shape[0]
            x = x.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
            freqs = position_ids.unsqueeze(-1).float() * visual.rotary_pos_emb.inv_freq.float()
            angles = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
            angles = torch.cat([angles, angles], dim=-1)
            angles = angles.reshape(n // unit, unit, -1)[window_index].reshape(n, -1).unsqueeze(1)
            cos, sin = angles.cos(), angles.sin()
            same = window_ids.unsqueeze(0) == window_ids.unsqueeze(1)
            window_bias = torch.where(same, torch.zeros((), dtype=torch.float32),
                                      torch.full((), float("-inf"), dtype=torch.float32))
            for i, blk in enumerate(blocks):
                x = x + self._attention(blk.attn, blk.norm1(x), cos, sin, None if i in full else window_bias)
                x = x + blk.mlp(blk.norm2(x))
            return visual.merger(x)[reverse_index]

    return QwenVisionGraph().eval()


def _feeds(pixels: np.ndarray, grid: tuple[int, int, int], config: QwenVisionConfig) -> dict[str, np.ndarray]:
    return {PIXELS_NAME: pixels, **graph_inputs(grid, config)}


def _export_fp32(visual: Any, config: QwenVisionConfig, path: Path, metadata: dict[str, str]) -> None:
    torch = require("torch")
    onnx = require("onnx")
    pixels, grid = patchify(validation_images(112)[0][1], config)
    feeds = _feeds(pixels, grid, config)
    args = tuple(torch.from_numpy(feeds[name]) for name in (PIXELS_NAME, *GRAPH_INPUTS))
    dynamic = {PIXELS_NAME: {0: "patches"}, "position_ids": {0: "patches"}, "window_index": {0: "blocks"},
               "reverse_index": {0: "blocks"}, "window_ids": {0: "patches"}, OUTPUT_NAME: {0: "blocks"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_graph_module(visual), args, str(path), input_names=[PIXELS_NAME, *GRAPH_INPUTS],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def run_graph(path: Path, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, dict(feeds))[0], dtype=np.float32)


def export_qwen_vision(visual: Any, vision_config: Mapping[str, Any], preprocessor: dict[str, Any], out: Path, *,
                       tolerances: Mapping[str, float], config_sha256: str, fp16: bool = True,
                       int8: bool = True) -> VisionExport:
    """Export `visual` (transformers' `Qwen2_5_VisionTransformerPretrainedModel`, float32, eval), validate
    every file against it image by image, and publish `out/` only if fp32 (and fp16) passed."""
    torch = require("torch")
    out = Path(out)
    refuse_existing(out, hint="choose a new folder or remove it")
    config = QwenVisionConfig.from_dict(preprocessor, window_size=int(vision_config.get("window_size", 112)))
    images = validation_set(config)
    cases = []
    with torch.no_grad():
        for name, image in images:
            pixels, grid = patchify(image, config)
            expected = visual(torch.from_numpy(pixels), grid_thw=torch.tensor([grid]))
            expected = getattr(expected, "pooler_output", expected)
            cases.append((name, grid, _feeds(pixels, grid, config), expected.float().numpy()))
    metadata = {"huatuo.kind": "vision", "huatuo.preprocess": QWEN_PREPROCESS, "huatuo.hidden": str(cases[0][3].shape[-1]),
                "huatuo.source_config_sha256": config_sha256}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as tmp:
        _export_fp32(visual, config, tmp / FP32_NAME, metadata)
        files = derive_files(tmp, fp16=fp16, int8=int8)
        results: dict[str, dict[str, Any]] = {}
        for precision, file in files.items():
            metrics = [{"name": name, "grid": list(grid), **embedding_metrics(expected[None], run_graph(tmp / file, feeds)[None])[0]}
                       for name, grid, feeds, expected in cases]
            tolerance = Tolerance(min_cosine=float(tolerances[precision]))
            min_cos = min(m["cosine"] for m in metrics)
            results[file] = {"passed": min_cos >= tolerance.min_cosine, "min_cosine": min_cos,
                             "max_abs_diff": max(m["max_abs_diff"] for m in metrics),
                             "tolerance": {"min_cosine": tolerance.min_cosine, "max_abs_diff": None}, "images": metrics}
        rejected = gate_files(tmp, files, results, "transformers' Qwen2.5-VL tower")
        fidelity: dict[str, Any] = {
            "reference": "transformers Qwen2_5_VisionTransformerPretrainedModel (PyTorch fp32), pooler_output",
            "provider": "CPUExecutionProvider", "opset": OPSET,
            "input": {"name": PIXELS_NAME, "shape": ["patches", 3 * config.temporal_patch_size * config.patch_size ** 2],
                      "dtype": "float32", "index_inputs": list(GRAPH_INPUTS)},
            "output": {"name": OUTPUT_NAME, "shape": ["patches/4", cases[0][3].shape[-1]], "dtype": "float32"},
            "images": [name for name, *_ in cases], "files": results,
        }
        if rejected:
            fidelity["rejected"] = rejected
        (tmp / PREPROCESSOR_NAME).write_text(json.dumps(preprocessor, indent=2))
    return VisionExport(out=out, files=sorted(p.name for p in out.iterdir()), fidelity=fidelity)
