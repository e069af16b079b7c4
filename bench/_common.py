"""Helpers shared by the benchmark scripts: a median timer and the Qwen2-0.5B-shaped bundle.

The bundle takes minutes to build (CLIP-L export and validation, LLM verification against the
PyTorch reference), so it is built once into `bench/out/` (git-ignored) and reused by
`bench_ttft.py` and `bench_batch.py`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

#: Qwen2-0.5B's LLM (hidden 896, 24 layers, 14/2 heads, FFN 4864, 151936 embedding rows) under a
#: CLIP ViT-L/14-336 tower (hidden 1024, 24 layers, 16 heads, MLP 4096, 576 image tokens).
QWEN2_05B_CLIP_L = dict(
    arch="llava-qwen2", shards=2, dtype="bf16",
    hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
    padded_vocab_size=151936, max_position_embeddings=32768,
    vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, image_size=336, patch_size=14,
    vision_projection_dim=768,
)


def median_seconds(fn: Callable[[], object], runs: int, *, warmup: bool = True) -> float:
    """Median wall seconds of `runs` calls, after one untimed warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def checkpoint_path() -> Path:
    """The random Qwen2-0.5B / CLIP-L checkpoint, written on first use."""
    from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

    src = OUT / "qwen2-0.5b-clip-l-checkpoint"
    if not (src / "config.json").exists():
        t = time.perf_counter()
        write_synthetic_checkpoint(src, SynthSpec(**QWEN2_05B_CLIP_L))
        print(f"# wrote checkpoint in {time.perf_counter() - t:.0f} s")
    return src


def qwen05b_bundle(threads: int = 2) -> Path:
    """The F16 bundle of `QWEN2_05B_CLIP_L` (built by `build_bundle`, verification included)."""
    from huatuo_convert.bundle_build import build_bundle

    bundle = OUT / "qwen2-0.5b-clip-l-f16"
    if not (bundle / "manifest.json").exists():
        src = checkpoint_path()
        t0 = time.perf_counter()
        stamp = lambda msg: print(f"# [{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
        build_bundle(src, bundle, "f16", force=True, threads=threads, log=stamp)
        stamp("bundle built")
    return bundle


def quantized_llm(bundle: Path, quant: str = "q4_k_m", threads: int = 2) -> Path:
    """The bundle's F16 LLM requantized by llama.cpp, kept next to (not inside) the bundle."""
    from huatuo_convert.quantize import llama_quantize

    dst = OUT / f"{bundle.name.removesuffix('-f16')}-llm-{quant}.gguf"
    if not dst.exists():
        t = time.perf_counter()
        tmp = dst.with_suffix(".partial")
        llama_quantize(bundle / "llm-f16.gguf", tmp, quant, threads=threads)
        tmp.rename(dst)
        print(f"# quantized {quant} in {time.perf_counter() - t:.0f} s")
    return dst
