"""7B-shaped time to first token: ONNX Runtime or llama.cpp mtmd + llama.cpp Q4_K_M / Q8_0 on every
CPU variant this machine runs, against PyTorch eager, in one run.

Model (random weights, real shapes): Qwen2-7B's LLM (hidden 3584, 28 layers, 28/4 heads, FFN 18944,
152064 embedding rows) under a CLIP ViT-L/14-336 tower (hidden 1024, 24 layers, 576 patches) with
the `mlp2x_gelu` projector, on Qwen2's real vocabulary (llama.cpp's vocab-only GGUF, as
tests/real_vocab.py takes it). Built once into bench/out/ttft-<shape>/ with the project's own
converters, every one streaming (no step holds the model in memory):

  checkpoint/        `convert synth`'s writer, bf16 in 16 shards (15 GiB for 7b)
  llm-q8_0.gguf      `write_llm_gguf` (huatuo's writer), verification off (no 7B reference run)
  llm-q4_k_m.gguf    the same through its F16 intermediate and llama.cpp's quantizer (removed after)
  vision/            `export_vision`: fp32, fp16 and the int8 file if it passes its cosine gate
  mmproj-f16.gguf    `write_mmproj` (llama.cpp's own mtmd path)

Each (LLM quantization, CPU variant) is one child process (a process loads one variant; the variant
is forced with HUATUO_CPU_VARIANT as bench_cpu_kernels.py does, weight repacking left to huatuo's
rule). In it, per image path (ONNX fp32, ONNX int8, mtmd), after a warm-up (every encoder once, a
prefill of the prompt with 16 image rows, which pages the weights in):
  encode       preprocessing + image encoder -> 576 embedding rows
  prefill      the whole prompt (system text, 576 image rows, the question) from an empty KV cache
  first token  greedy choice from the last logits (repetition penalty) and its text
The PyTorch peer is its own child: the checkpoint's CLIP tower and projector in fp32 (transformers'
PIL CLIP processor), the LLM in bf16 (its stored dtype; fp32 would need 30 GiB) with eager
attention, its weights memory-mapped from the safetensors shards (page cache, not private memory:
other processes keep theirs), one forward keeping only the last logits, as `generate` does.
Children run one after the other (the machine cannot hold two 7B models); ratios are against
the PyTorch peer of the same run.

    PYTHONPATH=$PWD nice python bench/bench_ttft_7b.py --shape tiny     # a minute: checks the script
    PYTHONPATH=$PWD nice python bench/bench_ttft_7b.py                  # 7B: build once, then the table
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import OUT

QUANTS = ("q4_k_m", "q8_0")
PATHS = ("onnx-fp32", "onnx-int8", "mtmd")
PATH_NAMES = {"onnx-fp32": "ONNX Runtime CPU fp32", "onnx-int8": "ONNX Runtime CPU int8", "mtmd": "llama.cpp mtmd (mmproj f16)"}
LLAVA_QWEN2 = dict(arch="llava-qwen2", dtype="bf16", max_position_embeddings=32768, padded_vocab_size=152064)
SHAPES = {
    "7b": dict(LLAVA_QWEN2, shards=16, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24,
               image_size=336, patch_size=14, vision_projection_dim=768),
    # hidden 256: every LLM weight is a whole number of Q4_K blocks, as in the 7B
    "tiny": dict(LLAVA_QWEN2, shards=2, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                 num_kv_heads=2, vision_hidden_size=128, vision_intermediate_size=256, vision_layers=3,
                 image_size=56, patch_size=14, vision_projection_dim=64),
}
SHAPE_NAMES = {"7b": "Qwen2-7B-shaped LLM + CLIP-L/336 tower + mlp2x_gelu projector",
               "tiny": "tiny LLM (hidden 256, 2 layers) + tiny CLIP tower (script check only)"}
#: a radiologist's question; with the prompt format's text around it, ~40 text positions beside 576 image rows
QUESTION = ("Describe the findings on this axial CT slice: is there a pleural effusion, a pneumothorax, "
            "a consolidation or a mass, and on which side?")
#: the environment as the user started the benchmark: children get this, not what huatuo set here
BASE_ENV = dict(os.environ)


# --- the model, built once ---------------------------------------------------------------------

def work_dir(shape: str) -> Path:
    return OUT / f"ttft-{shape}"


def build(shape: str, threads: int) -> Path:
    """Checkpoint, both GGUFs, the ONNX vision folder and the mmproj of `shape`; what exists is kept."""
    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.llm_gguf import write_llm_gguf
    from huatuo_convert.mmproj import write_mmproj
    from huatuo_convert.onnx_export import export_vision
    from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint
    from tests.real_vocab import QWEN2, vocab_dir

    work = work_dir(shape)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def stamp(msg: str) -> None:
        print(f"# [{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    src = work / "checkpoint"
    if not (src / "config.json").exists():
        partial = work / "checkpoint.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_synthetic_checkpoint(partial, SynthSpec(vocab_from=str(vocab_dir() / QWEN2), **SHAPES[shape]))
        partial.rename(src)
        stamp("checkpoint written")
    ckpt = LlavaCheckpoint.open(src)
    for quant in QUANTS:  # Q4_K_M first: its 15 GB F16 intermediate is gone before Q8_0 takes its room
        out = work / f"llm-{quant}.gguf"
        if not out.exists():
            write_llm_gguf(ckpt, out, quant, verify=False, sidecar=False, threads=threads)
            stamp(f"{out.name} written")
    if not (work / "vision").exists():
        export_vision(ckpt, work / "vision")
        stamp("vision ONNX exported and validated")
    if not (work / "mmproj-f16.gguf").exists():
        write_mmproj(ckpt, work / "mmproj-f16.gguf", ftype="f16")
        stamp("mmproj written")
    return work


def vision_gate(work: Path) -> dict[str, dict]:
    """File name -> its cosine figures from the export's fidelity record (rejected files included)."""
    fidelity = json.loads((work / "vision" / "vision.fidelity.json").read_text())
    gate = {name: {**r, "kept": True} for name, r in fidelity["files"].items()}
    gate.update({name: {**r, "kept": False} for name, r in fidelity.get("rejected", {}).items()})
    return gate


# --- children: one measurement each --------------------------------------------------------------

def the_image():
    """The 512x512 CT slice of bench_ttft.py (pydicom's 693_UNCR.dcm, rendered by huatuo's imaging)."""
    from pydicom.data import get_testdata_file

    from huatuo_cli.imaging import load_image

    rendered = load_image(get_testdata_file("693_UNCR.dcm", download=False), window="auto")
    return rendered.frames[0].convert("RGB")


def prompt_text(work: Path) -> str:
    from huatuo_cli.engine.prompt import Turn, prompt_format
    from huatuo_convert.checkpoint import LlavaCheckpoint

    fmt = prompt_format(LlavaCheckpoint.open(work / "checkpoint").family.prompt_format)
    return fmt.render([Turn(QUESTION, images=1)])


def stage_times(encode, prefill, first) -> dict[str, float]:
    out, value = {}, None
    for name, step in (("encode", encode), ("prefill", prefill), ("first", first)):
        t = time.perf_counter()
        value = step(value)
        out[name] = time.perf_counter() - t
    return out


def child_llama(work: Path, quant: str, paths: list[str], rounds: int, threads: int) -> dict:
    import numpy as np

    from huatuo_cli.engine.encoder import FP32_NAME, INT8_NAME, ImageEncoder
    from huatuo_cli.engine.llm import LlamaEngine, Sampling, choose_token
    from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder
    from huatuo_cli.engine.preprocess import PreprocessConfig
    from huatuo_cli.engine.session import interleave

    image, config = the_image(), PreprocessConfig.from_file(work / "vision" / "preprocessor_config.json")
    encoders = {}
    for path in paths:
        if path == "mtmd":
            mtmd = MtmdImageEncoder(work / "mmproj-f16.gguf", threads=threads)
            encoders[path] = lambda _, mtmd=mtmd: mtmd.encode([image], config)[0]
        else:
            onnx = work / "vision" / {"onnx-fp32": FP32_NAME, "onnx-int8": INT8_NAME}[path]
            if onnx.exists():  # the int8 file is there only if it passed its gate
                enc = ImageEncoder(onnx, device="cpu", threads=threads, preprocess_config=config)
                encoders[path] = lambda _, enc=enc: enc.encode([image])[0]
    llm = LlamaEngine(work / f"llm-{quant}.gguf", n_ctx=1024, n_threads=threads)
    chunks = llm.tokenize(prompt_text(work))
    sampling, rng = Sampling(), np.random.default_rng(0)

    def prefill(embeds):
        llm._clear()  # from an empty KV cache: no prefix of the previous round reused
        return llm.prefill(interleave(chunks, [embeds]))

    def first(logits):
        return llm.piece(choose_token(logits, [], sampling, rng))

    warm = [encode(None) for encode in encoders.values()][0]
    n_rows = warm.shape[0]
    # pages the weights in, starts the threads, sizes the token and the embedding graphs
    llm.prefill(interleave(chunks, [warm[:16]]))
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in encoders}
    for _ in range(rounds):
        for path, encode in encoders.items():
            rows[path].append(stage_times(encode, prefill, first))
    n_prompt = sum(len(c) for c in chunks) + int(n_rows)
    return {"kernels": llm.cpu_kernels, "rows": rows, "prompt": n_prompt, "image_rows": int(n_rows), "threads": threads}


def mmap_llm(ckpt):
    """The LLM in its stored dtype, every weight a view of the memory-mapped safetensors shards.

    Mapped pages are the page cache's: the kernel can drop them under memory pressure and read
    them again, where a private copy of 15 GiB would push other processes out.
    """
    import torch

    from huatuo_convert.checkpoint import _safetensors_header
    from huatuo_convert.reference import build_llm

    maps: dict[Path, mmap.mmap] = {}
    files = ckpt.tensors.files

    def mapped(name: str):
        path = files[name]
        if path not in maps:
            with open(path, "rb") as handle:
                maps[path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)  # private: never written back
        dtype, shape, offset = _safetensors_header(path)[name]
        count = 1
        for d in shape:
            count *= d
        return torch.frombuffer(maps[path], dtype=dtype, count=count, offset=offset).reshape(shape)

    ckpt.get = mapped  # build_llm reads every weight through ckpt.get; .to(stored dtype) keeps the view
    dtype = _safetensors_header(files["model.embed_tokens.weight"])["model.embed_tokens.weight"][0]
    return build_llm(ckpt, dtype), dtype


def child_torch(work: Path, rounds: int, threads: int) -> dict:
    import torch
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from huatuo_cli.engine.prompt import prompt_format
    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.reference import LlavaReference, VisionEncoder, build_vision
    from huatuo_convert.reference_tokenizer import load_reference_tokenizer

    torch.set_num_threads(threads)
    ckpt = LlavaCheckpoint.open(work / "checkpoint")
    vision = VisionEncoder(*build_vision(ckpt), ckpt.select_layer, ckpt.select_feature)  # fp32
    llm, dtype = mmap_llm(LlavaCheckpoint.open(work / "checkpoint"))
    tokenizer = load_reference_tokenizer(ckpt.root, prompt_format(ckpt.family.prompt_format))
    ref = LlavaReference(ckpt=ckpt, tokenizer=tokenizer, llm=llm, vision=vision)
    raw = ckpt.preprocessor_config
    proc = CLIPImageProcessorPil(**{k: v for k, v in raw.items() if k != "image_processor_type"})
    image, prompt = the_image(), prompt_text(work)

    def encode(_):  # the slice is square: LLaVA's expand2square returns it unchanged
        return ref.image_embeds(proc([image], return_tensors="pt")["pixel_values"])

    def prefill(image_embeds):
        with torch.no_grad():
            ref.image_embeds = lambda _px: image_embeds.to(dtype)  # splice the embeddings just computed
            try:
                embeds, _ = ref.prompt_embeds(prompt, torch.zeros(1))
            finally:
                del ref.image_embeds
            return llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    def first(scores):  # greedy; the repetition penalty has no history to act on yet
        return tokenizer.decode([int(scores[0].argmax())])

    with torch.no_grad():  # warm-up: the tower once, a 16-token forward that pages the LLM in
        encode(None)
        llm(input_ids=torch.arange(16).unsqueeze(0) + 100, logits_to_keep=1)
    rows = [stage_times(encode, prefill, first) for _ in range(rounds)]
    return {"kernels": f"PyTorch {torch.__version__}, LLM {str(dtype).removeprefix('torch.')}, tower float32",
            "rows": {"torch": rows}, "threads": threads}


# --- parent ----------------------------------------------------------------------------------------

def run_child(args, kind: str, *, variant: str | None = None, quant: str | None = None, paths=()) -> dict:
    env = dict(BASE_ENV, **({"HUATUO_CPU_VARIANT": variant} if variant else {}))
    cmd = [sys.executable, __file__, "--shape", args.shape, "--child", kind, "--rounds", str(args.rounds),
           "--threads", str(args.threads)]
    if quant:
        cmd += ["--quant", quant, "--paths", ",".join(paths)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    print(f"# child {kind} {variant or ''} {quant or ''}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def variants() -> list[str]:
    """Every CPU variant of the portable build this CPU runs, best first (as huatuo ranks them)."""
    from huatuo_cli.engine.cpu_backend import activate

    return list(activate().ranked)


def machine() -> str:
    from huatuo_cli.engine.cpu_verdicts import cpu_model

    flags = set()
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    has = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8") if f in flags]
    return f"{cpu_model() or platform.processor()}, {os.cpu_count()} CPUs, flags: {' '.join(has) or 'none of avx2/avx512/amx'}"


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {k: statistics.median(r[k] for r in rows) for k in ("encode", "prefill", "first")}
    out["total"] = statistics.median(sum(r.values()) for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="7b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds per child after its warm-up")
    ap.add_argument("--variants", help="comma-separated CPU variants (default: every one this CPU runs)")
    ap.add_argument("--all-paths", default="best",
                    help="variants that measure every image path ('best': the best-ranked one, 'all'); "
                         "the others measure ONNX fp32 only")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--report", type=Path, help="print the table of a results-*.json this script saved")
    ap.add_argument("--child", choices=["llama", "torch"])
    ap.add_argument("--quant", choices=QUANTS)
    ap.add_argument("--paths", default=",".join(PATHS))
    args = ap.parse_args()
    work = work_dir(args.shape)
    if args.child == "llama":
        print(json.dumps(child_llama(work, args.quant, args.paths.split(","), args.rounds, args.threads)))
        return
    if args.child == "torch":
        print(json.dumps(child_torch(work, args.rounds, args.threads)))
        return

    if args.report:
        saved = json.loads(args.report.read_text())
        report(args, work, saved["results"], **saved["context"])
        return
    build(args.shape, args.threads)
    if args.build_only:
        return
    ranked = variants()
    chosen = args.variants.split(",") if args.variants else ranked
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {"torch": run_child(args, "torch")}
    for quant in QUANTS:
        for variant in chosen:
            paths = PATHS if args.all_paths == "all" or variant == ranked[0] else ("onnx-fp32",)
            results[f"{quant}/{variant}"] = run_child(args, "llama", variant=variant, quant=quant, paths=paths)
    context = {"started": started, "load_before": load_before, "load_after": os.getloadavg(),
               "rounds": args.rounds, "threads": args.threads}
    (work / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps({"results": results, "context": context}))
    report(args, work, results, **context)


def report(args, work: Path, results: dict, started: str, load_before, load_after, rounds: int, threads: int) -> None:
    import torch

    gate = vision_gate(work)
    peer = results["torch"]
    if "error" in peer:
        raise SystemExit(f"PyTorch peer failed: {peer['error']}")
    base = medians(peer["rows"]["torch"])
    measured = next(r for r in results.values() if "prompt" in r)
    prompt, rows = measured["prompt"], measured["image_rows"]
    print(f"# {args.shape}: {SHAPE_NAMES[args.shape]} (random weights, Qwen2's real vocabulary); one 512x512 CT slice + "
          f"one question = {prompt} prompt positions ({rows} image rows, {prompt - rows} text); {threads} threads; "
          f"{rounds} timed round(s) per child after a warm-up; started {started}")
    print(f"# machine: {machine()}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(2 cores shared with other jobs running tests); torch {torch.__version__}")
    for name, g in sorted(gate.items()):
        print(f"# vision gate {name}: min cosine {g['min_cosine']:.6f} (needs >= {g['tolerance']['min_cosine']}) "
              f"-> {'kept' if g['kept'] else 'rejected'}")
    print("| LLM | llama.cpp CPU kernels | image encoder | encode s | prefill s | prefill tok/s | first token ms "
          "| time to first token s | TTFT vs PyTorch | prefill vs PyTorch |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| PyTorch eager | {peer['kernels']} | PyTorch eager fp32 | {base['encode']:.2f} | {base['prefill']:.2f} | "
          f"{prompt / base['prefill']:.1f} | {base['first'] * 1e3:.1f} | "
          f"{base['total']:.2f} | 1.00x | 1.00x |")
    for key, got in results.items():
        if key == "torch":
            continue
        quant, variant = key.split("/")
        if "error" in got:
            print(f"| {quant.upper()} | {variant} | failed: {got['error'][:200]} |")
            continue
        for path, rows in got["rows"].items():
            m = medians(rows)
            print(f"| {quant.upper()} | {got['kernels']} | {PATH_NAMES[path]} | {m['encode']:.2f} | {m['prefill']:.2f} | "
                  f"{got['prompt'] / m['prefill']:.1f} | {m['first'] * 1e3:.1f} | {m['total']:.2f} | "
                  f"{base['total'] / m['total']:.2f}x | {base['prefill'] / m['prefill']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
