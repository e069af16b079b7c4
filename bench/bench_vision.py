"""Image encoding speed on this CPU: every faithful way to run the tower, beside PyTorch eager, in one run.

A random tower shaped like CLIP ViT-L/14-336 (hidden 1024, 24 layers, 16 heads, MLP 4096, 576
patches) with an `mlp2x_gelu` projector to 3584 (Qwen2-7B's width) is written as a synthetic
checkpoint, exported with `huatuo convert vision` (fp32, fp16 and int8 files, each held to its
cosine bound; an int8 file that misses it is left out) and `huatuo convert mmproj`, then each
engine encodes the same preprocessed image:

- PyTorch eager fp32 (the reference) and ONNX Runtime's CPU provider on each exported file;
- ONNX Runtime bf16: checked in the run, not measured: ONNX Runtime's CPU provider has no
  bfloat16 MatMul kernel (a bf16 graph is refused with NOT_IMPLEMENTED), so a bf16 file could only
  run with a cast back to fp32 before every MatMul;
- OpenVINO's execution provider (the `onnxruntime-openvino` wheel: ONNX Runtime 1.24 with OpenVINO
  inside). That wheel ships its own `onnxruntime` module, so it cannot be installed beside
  huatuo's onnxruntime: `make install` puts it in `.venv/openvino-ort` (`--openvino-ort`), and it
  runs in a child process with that folder first on its path, as tests/test_openvino.py runs it,
  with the CPU provider fallback disabled (every node on OpenVINO, or the row says it could not).
  Its rows are held to the fp16 file's bound, as the workstation's gate holds it
  (`huatuo_cli/engine/vision_choice.py`);
- llama.cpp mtmd on the mmproj (f16, f32).
Every engine's embeddings of the 4 validation images are held to the bound of the file's own
precision (`convert/onnx_validate.py`, the family's vision tolerances); figures are medians, ratios
against PyTorch eager fp32 measured in the same run, on the same threads.

    PYTHONPATH=$PWD nice python bench/bench_vision.py --threads 2 --runs 5 --workdir bench/out/vision
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from _common import median_seconds

from huatuo_cli.engine.encoder import FP16_NAME, FP32_NAME, INT8_NAME, ImageEncoder
from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder
from huatuo_cli.engine.preprocess import PreprocessConfig, prepare_image, preprocess
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.mmproj import write_mmproj
from huatuo_convert.onnx_export import FIDELITY_NAME, export_vision
from huatuo_convert.onnx_validate import embedding_metrics, validation_images
from huatuo_convert.reference import VisionEncoder, build_vision
from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

CLIP_L_336 = SynthSpec(
    vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, image_size=336, patch_size=14,
    hidden_size=3584, intermediate_size=1024, num_layers=1, num_heads=28, num_kv_heads=4, shards=1, dtype="bf16",
)
#: --shape tiny: the test suite's tower, to check the script in seconds
SPECS = {"clip-l": CLIP_L_336, "tiny": SynthSpec(shards=1)}
FILES = {"fp32": FP32_NAME, "fp16": FP16_NAME, "int8": INT8_NAME}
OPENVINO_ORT = Path(sys.prefix) / "openvino-ort"

#: run with OPENVINO_ORT first on the path: its onnxruntime, not this venv's
OPENVINO_CHILD = r"""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
model, one, batch, out, threads, runs = sys.argv[1:7]
options = ort.SessionOptions()
options.log_severity_level = 3
options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # every node on OpenVINO, or fail
provider = ("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": threads})
session = ort.InferenceSession(model, options, providers=[provider])
name = session.get_inputs()[0].name
x1, xs = np.load(one), np.load(batch)
session.run(None, {name: x1})  # warm-up: OpenVINO compiles the graph on the first run
times = []
for _ in range(int(runs)):
    t = time.perf_counter()
    session.run(None, {name: x1})
    times.append(time.perf_counter() - t)
np.save(out, np.concatenate([session.run(None, {name: xs[i:i + 1]})[0] for i in range(len(xs))]))
print(json.dumps({"seconds": statistics.median(times), "providers": session.get_providers(), "ort": ort.__version__}))
"""


def bf16_refused() -> str:
    """ONNX Runtime's answer, in this run, to a bf16 MatMul on its CPU provider."""
    import onnx
    from onnx import TensorProto, helper

    a, b, c = (helper.make_tensor_value_info(n, TensorProto.BFLOAT16, s) for n, s in (("a", [4, 8]), ("b", [8, 4]), ("c", [4, 4])))
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "bf16", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        return str(exc).split(":", 2)[-1].strip()
    return ""


def openvino_rows(folder: Path, vision: Path, one: np.ndarray, batch: np.ndarray, threads: int, runs: int) -> list:
    """(name, bound's precision, seconds or None, embeddings or None, note) per ONNX file, through
    OpenVINO's EP from `folder` (the fp16 file's bound: the workstation's gate)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        np.save(Path(tmp) / "one.npy", one)
        np.save(Path(tmp) / "batch.npy", batch)
        for precision, name in FILES.items():
            if not (vision / name).exists():
                continue
            out = Path(tmp) / f"{precision}.npy"
            proc = subprocess.run([sys.executable, "-c", OPENVINO_CHILD, str(vision / name),
                                   str(Path(tmp) / "one.npy"), str(Path(tmp) / "batch.npy"), str(out), str(threads), str(runs)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(folder)})
            label = f"OpenVINO EP (onnxruntime-openvino) on the {precision} file"
            if proc.returncode != 0:
                rows.append((label, "fp16", None, None, f"failed: {proc.stderr.strip().splitlines()[-1][:160]}"))
                continue
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((label, "fp16", got["seconds"], np.load(out), f"onnxruntime {got['ort']}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shape", choices=list(SPECS), default="clip-l")
    ap.add_argument("--workdir", type=Path, default=None, help="reuse a folder (keeps the 1 GB of models)")
    ap.add_argument("--openvino-ort", type=Path, default=OPENVINO_ORT,
                    help="a folder with onnxruntime-openvino (default: make install's .venv/openvino-ort; skipped when absent)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-vision-"))
    src = work / "checkpoint"
    if not src.exists():
        write_synthetic_checkpoint(src, SPECS[args.shape])
    ckpt = LlavaCheckpoint.open(src)
    t = time.perf_counter()
    if not (work / "vision").exists():
        export_vision(ckpt, work / "vision")
    export_s = time.perf_counter() - t
    for ftype in ("f16", "f32"):
        if not (work / f"mmproj-{ftype}.gguf").exists():
            write_mmproj(ckpt, work / f"mmproj-{ftype}.gguf", ftype=ftype)
    fidelity = json.loads((work / "vision" / FIDELITY_NAME).read_text())
    bounds = ckpt.family.vision_tolerances

    config = PreprocessConfig.from_dict(ckpt.preprocessor_config)
    images = [img for _, img in validation_images(SPECS[args.shape].image_size)]
    pixels = preprocess(images, config)
    prepared = [prepare_image(img, config) for img in images]
    one_px, one_prep = pixels[:1], prepared[:1]

    reference = VisionEncoder(*build_vision(ckpt), ckpt.select_layer, ckpt.select_feature)
    with torch.no_grad():
        expected = reference(torch.from_numpy(pixels)).numpy()

    def torch_eager():
        with torch.no_grad():
            reference(torch.from_numpy(one_px))

    # (engine, precision whose bound applies, seconds per image, embeddings of the 4 images, note)
    rows: list = [("PyTorch eager fp32", "fp32", median_seconds(torch_eager, args.runs), expected, "the reference")]
    for precision, name in FILES.items():
        if not (work / "vision" / name).exists():
            rejected = fidelity.get("rejected", {}).get(name, {})
            rows.append((f"ONNX Runtime CPU {precision} file", precision, None, None,
                         f"left out by the export's gate (min cosine {rejected.get('min_cosine', float('nan')):.6f})"))
            continue
        enc = ImageEncoder(work / "vision" / name, device="cpu", threads=args.threads)
        rows.append((f"ONNX Runtime {enc.provider.removesuffix('ExecutionProvider')} {precision} file", precision,
                     median_seconds(lambda enc=enc: enc.encode_pixels(one_px), args.runs), enc.encode_pixels(pixels),
                     f"onnxruntime {onnxruntime.__version__}"))
    refusal = bf16_refused()
    rows.append(("ONNX Runtime CPU bf16", "bf16", None, None,
                 f"no bf16 MatMul kernel: {refusal}" if refusal else "bf16 MatMul accepted: add a bf16 file and measure it"))
    if (args.openvino_ort / "onnxruntime").is_dir():
        rows += openvino_rows(args.openvino_ort, work / "vision", one_px, pixels, args.threads, args.runs)
    else:
        rows.append(("OpenVINO EP", "fp16", None, None, f"not measured: no onnxruntime-openvino in {args.openvino_ort}"))
    for ftype in ("f16", "f32"):
        with MtmdImageEncoder(work / f"mmproj-{ftype}.gguf", threads=args.threads) as enc:
            rows.append((f"llama.cpp mtmd mmproj {ftype}", "fp16" if ftype == "f16" else "fp32",
                         median_seconds(lambda: enc.encode_prepared(one_prep), args.runs), enc.encode_prepared(prepared),
                         "upstream graph differs (README 'Vision')"))

    base = rows[0][2]
    tower = "CLIP-L/336-shaped random tower + projector to 3584" if args.shape == "clip-l" else "tiny tower"
    print(f"# {tower}, 1 image, {args.threads} threads, median of {args.runs}; "
          f"{_cpu()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"# export + validation (fp32, fp16, int8; 4 images): {export_s:.0f} s (0 when --workdir already had them)")
    print("| engine | s / image | speed vs PyTorch eager | min cosine to reference (4 images) | bound | faithful | note |")
    print("|---|---:|---:|---:|---:|---|---|")
    for name, precision, sec, embeds, note in rows:
        if sec is None:
            print(f"| {name} | - | - | - | {bounds.get(precision, '-')} | - | {note} |")
            continue
        cos = min(m["cosine"] for m in embedding_metrics(expected, embeds))
        print(f"| {name} | {sec:.3f} | {base / sec:.2f}x | {cos:.6f} | {bounds[precision]} | "
              f"{'yes' if cos >= bounds[precision] else 'no'} | {note} |")
    print(f"# workdir: {work}")


def _cpu() -> str:
    from huatuo_cli.engine.cpu_verdicts import cpu_model

    return cpu_model() or platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
