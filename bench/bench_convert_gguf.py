"""Benchmark: `huatuo convert gguf` against llama.cpp's own `convert_hf_to_gguf.py`, same weights.

Writes a random Qwen2-1.5B-shaped HuatuoGPT-Vision checkpoint (hidden 1536, 28 layers, 12 heads,
2 KV heads, FFN 8960, 151936 embedding rows; ~3 GB in bf16), converts it to F16 with huatuo
(`--no-verify`: conversion only) and, on a plain `Qwen2ForCausalLM` copy of the same shards,
with the `convert_hf_to_gguf.py` vendored in the llama-cpp-python 0.3.36 sdist. Each converter
runs in its own subprocess; wall time and peak RSS (GNU time's %M of that child) are printed
with their ratios. Not run in CI.

The reference converter identifies a BPE pre-tokenizer by hashing the token ids of a probe
string; our tiny trained tokenizer cannot reproduce real Qwen2's ids, so the runner patches
that one lookup (`get_vocab_base_pre`) to answer "qwen2", the value it gives for Qwen2
tokenizers. Nothing else in the converter is changed.

Usage:
  pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/sdist
  python bench/bench_convert_gguf.py --sdist /tmp/sdist/llama_cpp_python-0.3.36.tar.gz
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import runpy, sys
sys.path.insert(0, {vendor!r})
import conversion.base as base
for cls in vars(base).values():
    if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls):
        cls.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of one child process, measured by GNU time.

    Through /usr/bin/time, not wait4 from here: Linux carries the high-water RSS of the process
    that forks into the child's ru_maxrss at exec, so this (large) process would pollute it.
    """
    stats = log.with_suffix(".time")
    with open(log, "wb") as out:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *cmd], env=env, stdout=out,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed; see {log}:\n" + log.read_text()[-3000:])
    wall, max_kib = stats.read_text().split()[-2:]
    return float(wall), int(max_kib) / 2**20


def plain_qwen2_copy(src: Path, dst: Path) -> None:
    """Same shards as a `Qwen2ForCausalLM` folder: projector tensors dropped, mm_* keys removed."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    weight_map = {k: v for k, v in index["weight_map"].items() if not k.startswith("model.mm_projector.")}
    for shard in sorted(set(index["weight_map"].values())):
        names = [k for k, v in index["weight_map"].items() if v == shard]
        if any(n.startswith("model.mm_projector.") for n in names):
            tensors = {k: v for k, v in load_file(str(src / shard)).items() if k in weight_map}
            save_file(tensors, str(dst / shard), metadata={"format": "pt"})
            del tensors
        else:
            os.symlink(src / shard, dst / shard)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((src / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("mm_") and not k.startswith("tokenizer_")
              and k != "image_aspect_ratio"}
    config.update({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json", "generation_config.json"):
        shutil.copy(src / name, dst / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, required=True, help="llama_cpp_python-0.3.36.tar.gz")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/huatuo-bench-gguf"))
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(args.sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and (
            m.name.endswith("/convert_hf_to_gguf.py") or "/gguf-py/" in m.name or "/conversion/" in m.name)]
        tar.extractall(work / "sdist", members=members, filter="data")
    vendor = next((work / "sdist").glob("*/vendor/llama.cpp"))

    spec = SynthSpec(arch="llava-qwen2", vision_layout="folder", shards=4, dtype="bf16", hidden_size=1536,
                     intermediate_size=8960, num_layers=args.layers, num_heads=12, num_kv_heads=2,
                     padded_vocab_size=151936, max_position_embeddings=32768)
    t0 = time.perf_counter()
    ckpt = write_synthetic_checkpoint(work / "huatuo-ckpt", spec)
    plain_qwen2_copy(ckpt, work / "qwen2-plain")
    size = sum(p.stat().st_size for p in ckpt.glob("model-*.safetensors"))
    print(f"checkpoint: Qwen2-1.5B shapes ({args.layers} layers), {size / 2**30:.2f} GiB bf16 safetensors, "
          f"written in {time.perf_counter() - t0:.0f} s")

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    ours_out, theirs_out = work / "huatuo-f16.gguf", work / "llamacpp-f16.gguf"
    ours = run_measured([sys.executable, "-m", "huatuo_cli", "convert", "gguf", str(ckpt), str(ours_out),
                         "--quant", "f16", "--no-verify"], env, work / "huatuo.log")
    runner = RUNNER.format(vendor=str(vendor), script=str(vendor / "convert_hf_to_gguf.py"),
                           args=[str(work / "qwen2-plain"), "--outfile", str(theirs_out), "--outtype", "f16"])
    theirs = run_measured([sys.executable, "-c", runner], {**env, "PYTHONPATH": str(vendor)}, work / "llamacpp.log")

    same = compare(ours_out, theirs_out)
    print(f"{'converter':<34} {'wall s':>8} {'peak RSS GiB':>13} {'output GiB':>11}")
    for label, (wall, rss), path in (("huatuo convert gguf --quant f16", ours, ours_out),
                                      ("llama.cpp convert_hf_to_gguf.py", theirs, theirs_out)):
        print(f"{label:<34} {wall:>8.1f} {rss:>13.2f} {path.stat().st_size / 2**30:>11.2f}")
    print(f"ratio huatuo / llama.cpp: wall {ours[0] / theirs[0]:.2f}x, peak RSS {ours[1] / theirs[1]:.2f}x")
    print(f"tensor data identical in both outputs: {same}")
    if not args.keep:
        shutil.rmtree(work)


def compare(a: Path, b: Path) -> str:
    """Tensor by tensor: same names, types, shapes and bytes?"""
    import numpy as np
    from gguf import GGUFReader

    ra, rb = GGUFReader(a), GGUFReader(b)
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    if set(ta) != set(tb):
        return f"no (names differ: {sorted(set(ta) ^ set(tb))[:4]})"
    differ = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type or list(ta[n].shape) != list(tb[n].shape)
              or not np.array_equal(ta[n].data, tb[n].data)]
    return f"yes, all {len(ta)} tensors" if not differ else f"no ({len(differ)} differ, e.g. {differ[:4]})"


if __name__ == "__main__":
    main()
