"""Make the tiny GGUFs the CPU kernel self-test decodes (huatuo_cli/data/selftest-*.gguf).

Run once on the conversion side (needs the `convert` extra); the files are committed. Also writes
selftest-expected.npz: the models' plain logits as the x64 variant (plain C and SSE2, the reference
every other variant must match) computes them. Rows are 256
wide (hidden 256, FFN 512) because ggml's AMX kernels take a weight only when its rows are a whole
number of 256-value k-quant blocks, and repacking needs the same; anything smaller would let the
self-test pass without touching the kernels it exists for. One layer and a 640-row vocabulary keep
each file under 1 MB.

    python packaging/make_selftest_models.py huatuo_cli/data
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from huatuo_cli.engine import cpu_verdicts
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.llm_gguf import write_llm_gguf
from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

SPEC = SynthSpec(arch="llava-qwen2", hidden_size=256, intermediate_size=512, num_layers=1, num_heads=4,
                 num_kv_heads=2, vocab_size=600, dtype="f32", shards=1, seed=8)
#: q8_0 is written by huatuo's own writer; q4_k_m by llama.cpp's quantizer, whose process runs
#: the CPU self-test first, on the q8_0 file alone (the q4_k_m one does not exist yet)
QUANTS = ("q8_0", "q4_k_m")


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = LlavaCheckpoint.open(write_synthetic_checkpoint(Path(tmp) / "ckpt", SPEC))
        cpu_verdicts.SELFTEST_MODELS = ("selftest-q8_0.gguf",)  # the q4_k_m file does not exist yet
        cpu_verdicts.SELFTEST_EXPECTED = None  # nor the expected logits
        for quant in QUANTS:
            out = out_dir / f"selftest-{quant}.gguf"
            write_llm_gguf(ckpt, out, quant, force=True, verify=False, name="huatuo-cpu-selftest", sidecar=False)
            print(f"{out}: {out.stat().st_size} bytes")
    import llama_cpp

    x64 = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu-x64.so"
    models = [str(out_dir / f"selftest-{quant}.gguf") for quant in ("q4_k_m", "q8_0")]
    expected = out_dir / "selftest-expected.npz"
    subprocess.run([sys.executable, "-m", "huatuo_cli.engine.cpu_selftest", str(x64), *models,
                    "--save-expected", str(expected)], check=True)
    print(f"{expected}: {expected.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "huatuo_cli/data"))
