"""Image encoding speed: ONNX Runtime vs PyTorch eager vs llama.cpp mtmd, in one run.

A random tower shaped like CLIP ViT-L/14-336 (hidden 1024, 24 layers, 16 heads, MLP 4096, 576
patches) with an `mlp2x_gelu` projector to 896 (Qwen2-0.5B's width) is written as a synthetic
checkpoint, exported with `huatuo convert vision` and `huatuo convert mmproj`, then each engine
encodes the same preprocessed image. Figures are medians; ratios are against PyTorch eager fp32
measured in the same run, on the same threads. Fidelity (cosine to the reference) is printed too.

    PYTHONPATH=$PWD python bench/bench_vision.py --threads 2 --runs 5
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from _common import median_seconds

from huatuo_cli.engine.encoder import ImageEncoder
from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder
from huatuo_cli.engine.preprocess import PreprocessConfig, prepare_image, preprocess
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.mmproj import write_mmproj
from huatuo_convert.onnx_export import export_vision
from huatuo_convert.onnx_validate import embedding_metrics, validation_images
from huatuo_convert.reference import VisionEncoder, build_vision
from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

CLIP_L_336 = SynthSpec(
    vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, image_size=336, patch_size=14,
    hidden_size=896, intermediate_size=1024, num_layers=1, num_heads=14, num_kv_heads=2, shards=1, dtype="bf16",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None, help="reuse a folder (keeps the 1 GB of models)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-vision-"))
    src = work / "checkpoint"
    if not src.exists():
        write_synthetic_checkpoint(src, CLIP_L_336)
    ckpt = LlavaCheckpoint.open(src)
    t = time.perf_counter()
    if not (work / "vision").exists():
        export_vision(ckpt, work / "vision")
    export_s = time.perf_counter() - t
    for ftype in ("f16", "f32"):
        if not (work / f"mmproj-{ftype}.gguf").exists():
            write_mmproj(ckpt, work / f"mmproj-{ftype}.gguf", ftype=ftype)

    config = PreprocessConfig.from_dict(ckpt.preprocessor_config)
    named = validation_images(336)
    images = [img for _, img in named]
    pixels = preprocess(images, config)
    prepared = [prepare_image(img, config) for img in images]
    one_px, one_prep = pixels[:1], prepared[:1]

    reference = VisionEncoder(*build_vision(ckpt), ckpt.select_layer, ckpt.select_feature)
    with torch.no_grad():
        expected = reference(torch.from_numpy(pixels)).numpy()

    def torch_eager():
        with torch.no_grad():
            reference(torch.from_numpy(one_px))

    rows = [("PyTorch eager fp32", median_seconds(torch_eager, args.runs), expected)]
    for name in ("vision-fp32.onnx", "vision-fp16.onnx"):
        enc = ImageEncoder(work / "vision" / name, device="cpu", threads=args.threads)
        rows.append((f"ONNX Runtime {enc.provider.removesuffix('ExecutionProvider')} {name[7:11]}",
                     median_seconds(lambda enc=enc: enc.encode_pixels(one_px), args.runs), enc.encode_pixels(pixels)))
    for ftype in ("f16", "f32"):
        with MtmdImageEncoder(work / f"mmproj-{ftype}.gguf", threads=args.threads) as enc:
            rows.append((f"llama.cpp mtmd mmproj {ftype}", median_seconds(lambda: enc.encode_prepared(one_prep), args.runs),
                         enc.encode_prepared(prepared)))

    base = rows[0][1]
    print(f"# CLIP-L/336-shaped random tower + projector to 896, 1 image, {args.threads} threads, "
          f"median of {args.runs}; {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"# export + validation (fp32 and fp16, 4 images): {export_s:.0f} s")
    print("| engine | s / image | speed vs PyTorch eager | min cosine to reference (4 images) |")
    print("|---|---:|---:|---:|")
    for name, sec, embeds in rows:
        cos = min(m["cosine"] for m in embedding_metrics(expected, embeds))
        print(f"| {name} | {sec:.3f} | {base / sec:.2f}x | {cos:.6f} |")
    print(f"# workdir: {work}")


if __name__ == "__main__":
    main()
