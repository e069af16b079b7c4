"""The CPU kernel self-test, run in a child process by `cpu_backend` so that a crash is caught.

    python -m huatuo_cli.engine.cpu_selftest VARIANT_LIBRARY|"" MODEL.gguf [...] [--expected FILE.npz]

Loads the given ggml CPU variant (none: the build's own), then decodes 64 tokens in batches of 32
through each tiny GGUF (`cpu_backend.SELFTEST_MODELS`, shipped in huatuo_cli/data: Q4_K_M, i.e.
Q4_K and Q6_K weights, and Q8_0), first with weight repacking
off, then on, and prints one JSON line per stage. Batches of two or more tokens are what reach the
AMX and repacked kernels (a single token takes another path), and every weight row is 256 wide so
that the AMX kernels take the weights at all. The plain logits must match the expected ones
(`--expected`: what the x64 variant, plain C and SSE2, computed when the models were made) and the
repacked ones the plain ones: a kernel that computes garbage is as unusable as one that crashes.
Measured: the AVX2/AVX-512 variants differ from x64 by 1.0 % of the largest logit (they quantize
activations their own way), repacked from plain by the same; the bound is 5 %.

HUATUO_SELFTEST_FAULT=repack makes this child dereference NULL before the repacked decode (a real
SIGSEGV), for the tests of the guard that must see a child die where the AMX defect kills it.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

TOKENS = 64
BATCH = 32
#: largest |repacked - plain| logit difference allowed, relative to the largest |plain| logit
MAX_REL_DIFF = 0.05


def _report(stage: str, result: str, **extra: Any) -> None:
    print(json.dumps({"stage": stage, "result": result, **extra}), flush=True)


def _logits(llama_cpp: Any, model: Path) -> np.ndarray:
    llm = llama_cpp.Llama(str(model), n_ctx=TOKENS * 2, n_batch=BATCH, n_ubatch=BATCH, n_threads=2,
                          n_threads_batch=2, logits_all=True, verbose=False)
    try:
        ids = np.random.default_rng(0).integers(0, llm.n_vocab(), TOKENS).tolist()
        llm.eval(ids)
        return np.array(llm.scores[:TOKENS], dtype=np.float32)
    finally:
        llm.close()


def _rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(1e-6, float(np.abs(want).max())))


def main(argv: list[str]) -> int:
    import argparse

    import llama_cpp

    from huatuo_cli.engine.cpu_backend import load_variant, set_repack

    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--expected", type=Path, help="plain logits to match (.npz, one array per model)")
    parser.add_argument("--save-expected", type=Path, help="write this run's plain logits there instead")
    args = parser.parse_args(argv)
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    variant, models = args.variant, args.models
    missing = [m.name for m in models if not m.is_file()]
    if not models or missing:
        _report("plain", f"cannot run: self-test models missing {missing} (a broken install)")
        return 1
    if variant and not load_variant(lib_dir, Path(variant)):
        _report("plain", "does not load")
        return 1
    set_repack(llama_cpp, False)
    plain = [_logits(llama_cpp, m) for m in models]
    if args.save_expected:
        arrays: dict[str, Any] = {m.name: p.astype(np.float16) for m, p in zip(models, plain, strict=True)}
        np.savez_compressed(args.save_expected, **arrays)
        return 0
    if args.expected:
        with np.load(args.expected) as expected:
            off = max(_rel_diff(p, expected[m.name].astype(np.float32)) for m, p in zip(models, plain, strict=True))
        if off > MAX_REL_DIFF:
            _report("plain", f"mismatch (max relative logit difference {off:.3g} from the expected)")
            return 0
    _report("plain", "ok")
    if os.environ.get("HUATUO_SELFTEST_FAULT") == "repack":
        ctypes.string_at(0)  # SIGSEGV, as the miscompiled AMX kernel does
    set_repack(llama_cpp, True)
    worst = 0.0
    for ref, model in zip(plain, models, strict=True):
        got = _logits(llama_cpp, model)
        worst = max(worst, _rel_diff(got, ref))
    _report("repack", "ok" if worst <= MAX_REL_DIFF else f"mismatch (max relative logit difference {worst:.3g})",
            max_rel_diff=worst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
