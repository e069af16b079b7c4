"""llama.cpp CPU kernels: prefill and decode speed for every kernel set this machine runs,
huatuo's engine next to llama-cpp-python driven directly, and decode beside a busy process.

Models: random Qwen2-0.5B- and Qwen2-1.5B-shaped LLMs (151936 embedding rows), written to GGUF by
`huatuo convert gguf` (F16) and quantized by llama.cpp to Q4_K_M and Q8_0, once, into bench/out/.
Kernel sets: each CPU variant of the portable build that this CPU runs and that is worth showing
(the best one, and haswell = AVX2 as most workstations have), weight repacking on and off (on an
AMX CPU, the sapphirerapids variant with repacking is the AMX path).

Each measurement is its own process (a process loads one CPU variant): prefill = one prompt of
--prompt positions (an image-sized prompt: 576 image positions + a question) from an empty
cache; decode = --decode tokens one at a time, greedy. huatuo's side is `LlamaEngine.prefill` /
`LlamaEngine.generate` (repetition penalty 1.2 in numpy, as it answers); the direct side is the
same llama.cpp calls from llama-cpp-python's low-level API with numpy argmax, the variant library
loaded as any user of a GGML_BACKEND_DL build must. Both take turns in every round.

    PYTHONPATH=$PWD python bench/bench_cpu_kernels.py --rounds 3
    PYTHONPATH=$PWD python bench/bench_cpu_kernels.py --load-only      # only the busy-neighbour table
    PYTHONPATH=$PWD python bench/bench_cpu_kernels.py --against /tmp/gcc-build --shapes 1.5B  # two builds
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _common import OUT

SHAPES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2),
}
QUANTS = ("q4_k_m", "q8_0")
N_BATCH = 512
#: the environment as the user started the benchmark: children get this, not what huatuo set here
BASE_ENV = dict(os.environ)


def llm_gguf(shape: str, quant: str) -> Path:
    """The random LLM of `shape` at `quant`, built once into bench/out/."""
    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.gguf_write import DIRECT_TYPES
    from huatuo_convert.llm_gguf import write_llm_gguf
    from huatuo_convert.quantize import llama_quantize
    from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

    out = OUT / f"kernels-qwen2-{shape}-{quant}.gguf"
    if out.exists():
        return out
    src = OUT / f"kernels-qwen2-{shape}-checkpoint"
    if not (src / "config.json").exists():
        spec = SynthSpec(arch="llava-qwen2", shards=2, dtype="bf16", padded_vocab_size=151936,
                         max_position_embeddings=32768, **SHAPES[shape])
        write_synthetic_checkpoint(src, spec)
    if quant in DIRECT_TYPES:  # huatuo's own writer (q8_0, f16)
        write_llm_gguf(LlavaCheckpoint.open(src), out, quant, verify=False, sidecar=False)
        return out
    f16 = llm_gguf(shape, "f16")
    tmp = out.with_suffix(".partial")
    llama_quantize(f16, tmp, quant, threads=os.cpu_count())
    tmp.rename(out)
    return out


# --- children: one measurement each ------------------------------------------------------------------

def _prompt(n_vocab: int, n: int) -> list[int]:
    import numpy as np

    return np.random.default_rng(1).integers(100, min(n_vocab, 50000), n).tolist()


def child_huatuo(model: Path, prompt: int, decode: int, threads: int | None) -> dict:
    from huatuo_cli.engine.llm import LlamaEngine, Sampling

    engine = LlamaEngine(model, n_ctx=prompt + decode + 8, n_threads=threads, n_batch=N_BATCH)
    ids = _prompt(engine.n_vocab, prompt)
    engine.prefill([ids[:16]])  # warm-up
    engine._clear()
    t = time.perf_counter()
    engine.prefill([ids])
    prefill_s = time.perf_counter() - t
    engine._clear()
    gen = engine.generate([ids[:8]], Sampling(max_tokens=decode))
    return {"prefill_tps": prompt / prefill_s, "decode_tps": len(gen.tokens) / gen.decode_s,
            "tokens": len(gen.tokens), "kernels": engine.cpu_kernels}


def child_direct(model: Path, prompt: int, decode: int, threads: int, variant: str, repack: bool) -> dict:
    """llama-cpp-python's low-level API and numpy, nothing of huatuo."""
    import llama_cpp as L
    import numpy as np

    lib_dir = Path(L.__file__).parent / "lib"
    ggml = ctypes.CDLL("libggml.so.0")  # the copy libllama loaded (by soname)
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load(str(lib_dir / f"libggml-cpu-{variant}.so").encode())
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    mparams.use_extra_bufts = repack
    mdl = L.llama_model_load_from_file(str(model).encode(), mparams)
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = prompt + decode + 8, N_BATCH, N_BATCH
    cparams.n_threads = cparams.n_threads_batch = threads
    # the context huatuo's engine makes (llama-cpp-python's Llama: flash attention off), unless asked
    cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if os.environ.get("BENCH_FLASH_ATTN") else \
        L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(mdl, cparams)
    vocab = L.llama_model_get_vocab(mdl)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    mem = L.llama_get_memory(ctx)

    def run(tokens: list[int], start: int) -> None:
        for off in range(0, len(tokens), N_BATCH):
            part = tokens[off:off + N_BATCH]
            batch = L.llama_batch_init(len(part), 0, 1)
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + off + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, 0
            batch.logits[len(part) - 1] = 1
            assert L.llama_decode(ctx, batch) == 0
            L.llama_batch_free(batch)

    ids = _prompt(n_vocab, prompt)
    run(ids[:16], 0)
    L.llama_memory_clear(mem, True)
    t = time.perf_counter()
    run(ids, 0)
    prefill_s = time.perf_counter() - t
    L.llama_memory_clear(mem, True)
    run(ids[:8], 0)
    t = time.perf_counter()
    pos, made = 8, 0
    for _ in range(decode):
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        tok = int(np.argmax(logits))
        if L.llama_vocab_is_eog(vocab, tok):
            break
        run([tok], pos)
        pos, made = pos + 1, made + 1
    decode_s = time.perf_counter() - t
    return {"prefill_tps": prompt / prefill_s, "decode_tps": made / decode_s, "tokens": made,
            "kernels": f"{variant}, repack {'on' if repack else 'off'}"}


# --- parent -----------------------------------------------------------------------------------------------

def measure(driver: str, model: Path, variant: str, repack: bool, args, threads: int | None,
            extra_env: dict | None = None) -> dict:
    env = dict(BASE_ENV, HUATUO_CPU_VARIANT=variant, HUATUO_CPU_REPACK="1" if repack else "0", **(extra_env or {}))
    cmd = [sys.executable, __file__, "--child", driver, "--model", str(model), "--variant", variant,
           "--repack", str(int(repack)), "--prompt", str(args.prompt), "--decode", str(args.decode)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def shown_variants() -> list[str]:
    """The CPU variants worth showing: the best this CPU runs, and haswell (AVX2, as most workstations)."""
    from huatuo_cli.engine.cpu_backend import activate

    ranked = activate().ranked
    return [ranked[0]] + (["haswell"] if "haswell" in ranked and ranked[0] != "haswell" else [])


def kernel_sets() -> list[tuple[str, bool]]:
    return [(v, r) for v in shown_variants() for r in (True, False)]


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def kernels_table(args) -> None:
    from huatuo_cli.engine.threads import default_threads

    threads = default_threads()
    print(f"# llama.cpp kernels: prompt {args.prompt} positions, decode {args.decode} tokens, {threads} threads, "
          f"median of {args.rounds} rounds (huatuo and direct back to back, order alternating; ratios pair by "
          f"pair); {platform.machine()}, {_cpu_name()}")
    print("| model | quant | kernels | huatuo prefill tok/s | direct prefill tok/s | prefill ratio | "
          "huatuo decode tok/s | direct decode tok/s | decode ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes:
        for quant in QUANTS:
            model = llm_gguf(shape, quant)
            for variant, repack in kernel_sets():
                in_turns(f"{shape} | {quant}", f"{variant}, repack {'on' if repack else 'off'}", args.rounds,
                         partial(measure, "huatuo", model, variant, repack, args, threads),
                         partial(measure, "direct", model, variant, repack, args, threads))


def in_turns(row: str, kernels: str, rounds: int, a: Callable[[], dict], b: Callable[[], dict]) -> None:
    """Measure `a` and `b` back to back, order alternating, and print one table row: medians, and the
    ratios a/b pair by pair (the two ran back to back), then their median: robust to drift."""
    got: dict[str, list[dict]] = {"a": [], "b": []}
    for round_ in range(rounds):
        for side in (("a", "b") if round_ % 2 == 0 else ("b", "a")):
            got[side].append((a if side == "a" else b)())
    errors = [r["error"] for rows in got.values() for r in rows if "error" in r]
    if errors:
        print(f"| {row} | {kernels} | failed: {errors[0]} |")
        return
    x, y = got["a"], got["b"]
    rp = statistics.median(p["prefill_tps"] / q["prefill_tps"] for p, q in zip(x, y, strict=False))
    rd = statistics.median(p["decode_tps"] / q["decode_tps"] for p, q in zip(x, y, strict=False))
    print(f"| {row} | {x[0]['kernels']} | {median(x, 'prefill_tps'):.1f} | {median(y, 'prefill_tps'):.1f} | "
          f"{rp:.3f} | {median(x, 'decode_tps'):.2f} | {median(y, 'decode_tps'):.2f} | {rd:.3f} |", flush=True)


def builds_table(args) -> None:
    """huatuo on the installed llama.cpp build against another build of the same llama.cpp (--against DIR:
    a folder holding that build's `llama_cpp` package, e.g. `pip install --target DIR --no-deps WHEEL`), on
    the same models, variants and threads, in turns: what a change of compiler, OpenMP or flags costs."""
    from huatuo_cli.engine.cpu_backend import AMX_VARIANTS
    from huatuo_cli.engine.threads import default_threads

    threads = default_threads()
    other = {"PYTHONPATH": os.pathsep.join(filter(None, [str(args.against), BASE_ENV.get("PYTHONPATH")]))}
    info = json.loads((args.against / "llama_cpp" / "huatuo_build.json").read_text())
    print(f"\n# builds: installed (A) against {args.against} (B: {info['compiler']}, {' '.join(info['cmake_flags'])}); "
          f"prompt {args.prompt}, decode {args.decode}, {threads} threads, median of {args.rounds} rounds, A and B "
          f"in turns; {platform.machine()}, {_cpu_name()}")
    print("| model | quant | kernels | A prefill tok/s | B prefill tok/s | A/B prefill | A decode tok/s | "
          "B decode tok/s | A/B decode |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes:
        for quant in QUANTS:
            model = llm_gguf(shape, quant)
            for variant in shown_variants():
                repack = variant in AMX_VARIANTS  # huatuo's rule (cpu_backend.wants_repack)
                in_turns(f"{shape} | {quant}", variant, args.rounds,
                         partial(measure, "huatuo", model, variant, repack, args, threads),
                         partial(measure, "huatuo", model, variant, repack, args, threads, other))


def load_table(args) -> None:
    """Prefill and decode of the 0.5B Q4_K_M model with one busy process beside it (a viewer), and idle."""
    from huatuo_cli.engine.cpu_backend import activate
    from huatuo_cli.engine.threads import default_threads

    model = llm_gguf("0.5B", "q4_k_m")
    variant = activate().ranked[0]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        print(f"\n# one busy process beside the engine (2-core machine: {os.cpu_count()} CPUs); 0.5B q4_k_m, "
              f"{variant}, repack on; median of {args.rounds} rounds")
        print("| setting | prefill tok/s | decode tok/s |")
        print("|---|---:|---:|")
        physical = default_threads()
        cases = [("huatuo default (threads follow the idle physical cores)", "huatuo", None, {}),
                 (f"huatuo --threads {physical} (every physical core)", "huatuo", physical, {}),
                 (f"direct, {physical} threads", "direct", physical, {}),
                 ("direct, 1 thread", "direct", 1, {})]
        rows: dict[str, list[dict]] = {c[0]: [] for c in cases}
        for _ in range(args.rounds):
            for name, driver, threads, extra in cases:
                rows[name].append(measure(driver, model, variant, True, args, threads, extra))
        for name, _, _, _ in cases:
            r = rows[name]
            if any("error" in x for x in r):
                print(f"| {name} | failed | {r[0].get('error')} |")
                continue
            print(f"| {name} | {median(r, 'prefill_tps'):.1f} | {median(r, 'decode_tps'):.2f} |", flush=True)
    finally:
        busy.kill()


def _cpu_name() -> str:
    from huatuo_cli.engine.cpu_verdicts import cpu_model

    return cpu_model() or platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["huatuo", "direct"])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--variant")
    parser.add_argument("--repack", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--prompt", type=int, default=600)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--against", type=Path, help="only the builds table: the installed llama.cpp build "
                        "against the one whose llama_cpp package is in this folder")
    args = parser.parse_args()
    if args.child == "huatuo":
        print(json.dumps(child_huatuo(args.model, args.prompt, args.decode, args.threads)))
    elif args.child == "direct":
        from huatuo_cli.engine.threads import default_threads

        print(json.dumps(child_direct(args.model, args.prompt, args.decode, args.threads or default_threads(),
                                      args.variant, bool(args.repack))))
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        if args.against:
            builds_table(args)
            return
        if not args.load_only:
            kernels_table(args)
        load_table(args)


if __name__ == "__main__":
    main()
