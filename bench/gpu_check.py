"""Prove the GPU answer path on a real NVIDIA GPU (issue 26); run it wherever a GPU machine is lent.

    python bench/gpu_check.py BUNDLE [--image scan.dcm] [--runs 3] [--json gpu-check.json]

The same question is asked with `--device cpu`, `--device cuda` and, where ONNX Runtime offers it,
`--device tensorrt`, each `--runs` + 1 times in a fresh `huatuo ask --json` process (the first run is
a warm-up, not timed: TensorRT builds its engine then). It checks, and prints as a table:

  offload    the LLM's layers went to the GPU (llama.cpp's CUDA backend found it: `llm_gpu_offload`)
  encoder    the image encoder ran on the provider asked for (CUDA / TensorRT), with no fallback note
  answer     the first 16 greedy answer tokens equal the CPU's (the tolerance docs/deploy.md states:
             the same 16 tokens `convert all` holds a bundle to against PyTorch)
  speed      time to first token (encode + prefill, median of the timed runs) against the CPU's, a
             ratio measured in this run on this machine

Exit status: 0 when every check holds, 1 when one fails, 2 when there is no GPU to prove anything on
(no `nvidia-smi -L` device, or llama.cpp/ONNX Runtime built without CUDA): it never passes by skipping.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Is there a pleural effusion?"
#: the answer length compared (convert/bundle_build.py E2E_TOKENS: the bundle's own gate)
TOKENS = 16
HUATUO = [sys.executable, "-m", "huatuo_cli"]


def gpus() -> list[str]:
    """The NVIDIA GPUs the driver shows (`nvidia-smi -L`), one line each; none without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")] if out.returncode == 0 else []


def gpu_devices() -> list[str]:
    """The --device values this installation can run on a GPU: cuda, and tensorrt where offered."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [device for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"))
            if provider in available]


def ask(bundle: Path, image: Path, device: str) -> dict:
    cmd = [*HUATUO, "ask", "--json", "--max-tokens", str(TOKENS), "--model", str(bundle), "--device", device,
           str(image), QUESTION]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout)


def ttft(record: dict) -> float:
    return record["timings"]["encode_s"] + record["timings"]["prefill_s"]


def judge(device: str, cpu: list[dict], gpu: list[dict]) -> dict:
    """The four checks for one GPU device, from the CPU's and this device's records (the first run of
    each: a warm-up, compared but not timed)."""
    if any("error" in r for r in gpu):
        return {"device": device, "ok": False, "failed": [next(r["error"] for r in gpu if "error" in r)]}
    last = gpu[-1]
    provider = last["provider"]
    expected = "TensorrtExecutionProvider" if device == "tensorrt" else "CUDAExecutionProvider"
    timed = gpu[1:] or gpu
    result = {
        "device": device,
        "offload": bool(provider.get("llm_gpu_offload")),
        "encoder": provider.get("vision") == expected and not provider.get("vision_note"),
        "answer": all(r["answer"] == cpu[0]["answer"] for r in gpu),
        "ttft_cpu_s": statistics.median(ttft(r) for r in cpu[1:] or cpu),
        "ttft_gpu_s": statistics.median(ttft(r) for r in timed),
        "vision_provider": provider.get("vision"),
    }
    result["speedup"] = result["ttft_cpu_s"] / result["ttft_gpu_s"] if result["ttft_gpu_s"] else None
    result["failed"] = [name for name in ("offload", "encoder", "answer") if not result[name]]
    result["ok"] = not result["failed"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--image", type=Path, default=None, help="default: the demo's sample CT slice")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args(argv)
    found = gpus()
    if not found:
        print("gpu_check: no NVIDIA GPU visible (nvidia-smi -L): nothing proven", file=sys.stderr)
        return 2
    devices = gpu_devices()
    if not devices:
        print("gpu_check: ONNX Runtime offers no CUDA provider here: install the GPU artifact "
              "(onnxruntime-gpu); nothing proven", file=sys.stderr)
        return 2
    if args.image is None:
        sys.path.insert(0, str(ROOT))
        from demo.samples import sample_file

        image = sample_file()
    else:
        image = args.image
    env_note = {k: v for k, v in os.environ.items() if k.startswith("HUATUO_")}
    cpu = [ask(args.bundle, image, "cpu") for _ in range(args.runs + 1)]
    if any("error" in r for r in cpu):
        print(f"gpu_check: the CPU run failed: {next(r['error'] for r in cpu if 'error' in r)}", file=sys.stderr)
        return 1
    results = [judge(device, cpu, [ask(args.bundle, image, device) for _ in range(args.runs + 1)])
               for device in devices]
    print(f"GPU: {found[0]}; bundle {args.bundle.name}; {args.runs} timed runs each; env {env_note or 'default'}")
    print(f"{'device':10} {'offload':8} {'encoder':8} {'answer':7} {'TTFT cpu s':>10} {'TTFT gpu s':>10} {'speedup':>8}")
    for r in results:
        if "ttft_gpu_s" not in r:
            print(f"{r['device']:10} FAILED: {r['failed'][0]}")
            continue
        print(f"{r['device']:10} {str(r['offload']):8} {str(r['encoder']):8} {str(r['answer']):7} "
              f"{r['ttft_cpu_s']:10.3f} {r['ttft_gpu_s']:10.3f} {r['speedup']:7.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"gpu": found, "bundle": str(args.bundle), "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
