"""`huatuo convert vision`: CLIP tower + projector as one ONNX graph, validated before it is kept.

The graph is `pixel_values [N,3,H,W] -> image_embeds [N, tokens, hidden]`: CLIP hidden state at
`mm_vision_select_layer`, patch tokens only, `mlp2x_gelu` projector (the reference's
`VisionEncoder`, exported as is, so the two cannot drift). N is dynamic; H and W are fixed because
CLIP's position embeddings are. The encoder layers after the selected one are cut before export:
they do not change the result and would only cost time and bytes.

Two files: fp32 (the exact one; TensorRT builds its own fp16 engine from it) and fp16 with float32
inputs and outputs (`keep_io_types`: the runtime feeds and reads float32 whatever file it loads;
half the size, for CUDA). Both are checked against PyTorch on the CPU provider; the folder appears
only when both pass (written to a temporary sibling, then renamed).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from huatuo_cli.engine.encoder import FP16_NAME, FP32_NAME, INT8_NAME, PREPROCESSOR_NAME
from huatuo_cli.engine.providers import INPUT_NAME
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.atomic import atomic_folder, refuse_existing
from huatuo_convert.checkpoint import QWEN_LAYOUT, LlavaCheckpoint
from huatuo_convert.onnx_validate import Tolerance, validate_onnx, validation_pixels
from huatuo_convert.reference import VisionEncoder, build_vision

OPSET = 17
FIDELITY_NAME = "vision.fidelity.json"
OUTPUT_NAME = "image_embeds"


@dataclass
class VisionExport:
    """What `export_vision` wrote: the folder, its files and the fidelity sidecar's content."""

    out: Path
    files: list[str]
    fidelity: dict


def load_encoder(ckpt: LlavaCheckpoint, *, select_layer: int | None = None) -> VisionEncoder:
    """The reference vision path in float32, with the layers past the selected one removed.

    `hidden_states[k]` (element 0 = embeddings) is the output of layer k-1, so keeping layers[:k]
    and reading `hidden_states[-1]` of the truncated tower is the same tensor as the full tower's
    `hidden_states[k]`; post_layernorm is not on that path.
    """
    clip, projector = build_vision(ckpt)
    select = ckpt.select_layer if select_layer is None else select_layer
    layers = clip.encoder.layers  # transformers 5: no `vision_model` wrapper any more
    n = len(layers)
    keep = select + n + 1 if select < 0 else select
    if not 0 < keep <= n:
        raise HuatuoError(f"mm_vision_select_layer {select} is out of range for a {n}-layer vision tower")
    del layers[keep:]
    clip.config.num_hidden_layers = keep
    return VisionEncoder(clip, projector, -1, ckpt.select_feature)


def _export_module(encoder: VisionEncoder):
    torch = require("torch")

    class VisionGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip, self.projector = encoder.clip, encoder.projector

        def forward(self, pixel_values):
            return encoder(pixel_values)

    return VisionGraph().eval()


def _export_fp32(encoder: VisionEncoder, image_size: int, path: Path, metadata: dict[str, str]) -> None:
    torch = require("torch")
    onnx = require("onnx")
    dummy = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about python bools on fixed shapes
        torch.onnx.export(
            _export_module(encoder), (dummy,), str(path),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _convert_fp16(src: Path, dst: Path) -> None:
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def _convert_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights of every MatMul, activations quantized per
    batch at run time (uint8 x int8: the VNNI / AMX-INT8 kernels of ONNX Runtime's CPU provider)."""
    quantization = require("onnxruntime.quantization")
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8,
                                  op_types_to_quantize=["MatMul", "Gemm"])


def derive_files(folder: Path, *, fp16: bool, int8: bool) -> dict[str, str]:
    """From `folder`/FP32_NAME, the fp16 and int8 files asked for; precision -> file name, fp32 included."""
    files = {"fp32": FP32_NAME}
    if fp16:
        _convert_fp16(folder / FP32_NAME, folder / FP16_NAME)
        files["fp16"] = FP16_NAME
    if int8:
        _convert_int8(folder / FP32_NAME, folder / INT8_NAME)
        files["int8"] = INT8_NAME
    return files


#: optional files: one that misses its tolerance is left out (figures kept), not a failed export
OPTIONAL = ("int8",)


def gate_files(folder: Path, files: dict[str, str], results: dict[str, dict], reference: str) -> dict[str, dict]:
    """Apply the validation figures to the exported files in `folder`: an OPTIONAL file that missed its
    bound is deleted and returned with its figures (the rejected ones); any other miss is a HuatuoError
    (nothing is published). `results`: file name -> report with `passed`, `min_cosine`, `max_abs_diff`,
    `tolerance`; the rejected are removed from it."""
    rejected = {}
    for precision in OPTIONAL:
        name = files.get(precision)
        if name and not results[name]["passed"]:  # not faithful enough to be offered: left out
            rejected[name] = results.pop(name)
            (folder / name).unlink()
    failed = {name: r for name, r in results.items() if not r["passed"]}
    if failed:
        detail = "; ".join(f"{name}: min cosine {r['min_cosine']:.7f} (needs >= {r['tolerance']['min_cosine']}), "
                           f"max abs diff {r['max_abs_diff']:.3g}" for name, r in failed.items())
        raise HuatuoError(f"exported vision encoder does not match {reference}: {detail}",
                          hint="nothing was written; this is a converter bug or an unsupported tower, please report it")
    return rejected


def export_vision(
    src: Path | str,
    out: Path | str,
    *,
    fp16: bool = True,
    int8: bool = True,
    tolerances: dict | None = None,
    select_layer: int | None = None,
    sidecar: bool = True,
) -> VisionExport:
    """Export, validate, and only then publish `out/` (which must not exist).

    `select_layer` overrides the checkpoint's (tests use it to prove validation can fail).
    Raises HuatuoError, leaving nothing behind, when a file is out of tolerance. `sidecar=False`
    (the bundle builder, which puts the figures in manifest.json) leaves out vision.fidelity.json.
    """
    torch = require("torch")
    out = Path(out)
    refuse_existing(out, hint="choose a new folder or remove it")
    ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
    if ckpt.layout == QWEN_LAYOUT:  # transformers' Qwen2.5-VL: its own tower is exported and is the reference
        from huatuo_convert.qwen_reference import QwenVLReference
        from huatuo_convert.qwen_vision_export import export_qwen_vision

        model = QwenVLReference.load(ckpt).model
        result = export_qwen_vision(model.model.visual, ckpt.config["vision_config"], ckpt.preprocessor_config, out,
                                    tolerances={**ckpt.family.vision_tolerances,
                                                **{k: t.min_cosine for k, t in (tolerances or {}).items()}},
                                    config_sha256=ckpt.config_sha256, fp16=fp16, int8=int8)
        if sidecar:
            (out / FIDELITY_NAME).write_text(json.dumps(result.fidelity, indent=2))
            result.files = sorted(p.name for p in out.iterdir())
        return result
    tower = ckpt.vision  # raises a HuatuoError naming what was looked for
    tolerances = {**{graph: Tolerance(min_cosine=cosine) for graph, cosine in ckpt.family.vision_tolerances.items()},
                  **(tolerances or {})}
    image_size = int(tower.config["image_size"])
    preprocessor = ckpt.preprocessor_config

    reference = VisionEncoder(*build_vision(ckpt), ckpt.select_layer, ckpt.select_feature)
    export_encoder = load_encoder(ckpt, select_layer=select_layer)
    pixels = validation_pixels(preprocessor, image_size)
    with torch.no_grad():
        expected = reference(torch.from_numpy(pixels)).numpy()
    tokens, hidden = int(expected.shape[1]), int(expected.shape[2])
    metadata = {
        "huatuo.kind": "vision", "huatuo.image_size": str(image_size), "huatuo.tokens": str(tokens),
        "huatuo.hidden": str(hidden), "huatuo.select_layer": str(ckpt.select_layer),
        "huatuo.select_feature": ckpt.select_feature, "huatuo.source_config_sha256": ckpt.config_sha256,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as tmp:  # the folder appears only if both files passed
        _export_fp32(export_encoder, image_size, tmp / FP32_NAME, metadata)
        files = derive_files(tmp, fp16=fp16, int8=int8)
        results = {}
        for precision, name in files.items():
            report = validate_onnx(tmp / name, pixels, expected, tolerances[precision])
            results[name] = report
        rejected = gate_files(tmp, files, results, "the PyTorch reference")
        fidelity = {
            "reference": "huatuo_convert.reference.VisionEncoder (PyTorch fp32, eager attention)",
            "provider": "CPUExecutionProvider",
            "opset": OPSET,
            "input": {"name": INPUT_NAME, "shape": ["N", 3, image_size, image_size], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["N", tokens, hidden], "dtype": "float32"},
            "select_layer": ckpt.select_layer,
            "select_feature": ckpt.select_feature,
            "images": [img["name"] for img in results[FP32_NAME]["images"]],
            "files": results,
        }
        if rejected:
            fidelity["rejected"] = rejected
        if sidecar:
            (tmp / FIDELITY_NAME).write_text(json.dumps(fidelity, indent=2))
        (tmp / PREPROCESSOR_NAME).write_text(json.dumps(preprocessor, indent=2))
    return VisionExport(out=out, files=sorted(p.name for p in out.iterdir()), fidelity=fidelity)

