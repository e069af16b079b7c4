"""`huatuo serve` under 1, 4 and 16 concurrent clients vs `huatuo ask` in a loop (and, where its
`[server]` extra imports, llama-cpp-python's own server on the same GGUF, text only: it has no
huatuo vision path).

Each client sends the same PNG + question (greedy, --max-tokens) with `stream: true` and measures
time to first content token and total time; requests/s = requests / wall time of the round.
`ask` in a loop is one process per question (model load included: what a script calling the CLI
pays); its time to first token is the time to the first byte of the answer on stdout.

    PYTHONPATH=$PWD python bench/bench_serve.py --bundle /tmp/tiny-bundle --requests 32
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

QUESTION = "Describe the findings."


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def start(cmd: list[str], env: dict[str, str], pattern: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("server did not start")


def stream_one(base: str, body: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=600) as res:
        res.raise_for_status()
        for line in res.iter_lines():
            if first is None and line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (first if first is not None else total), total


def round_of(base: str, body: dict, clients: int, requests: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: stream_one(base, body), range(requests)))
    wall = time.perf_counter() - t0
    return {"rps": requests / wall, "ttft": statistics.median(r[0] for r in results)}


def ask_loop(bundle: Path, image: Path, env: dict[str, str], runs: int, max_tokens: int) -> dict[str, float]:
    ttfts, t_all = [], time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "huatuo_cli", "ask", "--model", str(bundle), "--max-tokens",
                                 str(max_tokens), str(image), QUESTION], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        proc.stdout.read(1)
        ttfts.append(time.perf_counter() - t0)
        proc.stdout.read()
        proc.wait()
    return {"rps": runs / (time.perf_counter() - t_all), "ttft": statistics.median(ttfts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--ask-runs", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    env.pop("HUATUO_API_KEY", None)
    image = home / "image.png"
    Image.fromarray((np.random.default_rng(0).random((256, 256, 3)) * 255).astype("uint8")).save(image)
    buf = io.BytesIO(image.read_bytes())
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": QUESTION}]}],
            "max_tokens": args.max_tokens, "temperature": 0, "stream": True}
    threads = ["--threads", str(args.threads)] if args.threads else []
    levels = (1, 4, 16)
    print(f"# huatuo serve vs huatuo ask in a loop: {args.bundle.name}, 1 image + 1 question, --max-tokens "
          f"{args.max_tokens}, {args.requests} requests per level; {cpu_name()}, {os.cpu_count()} CPUs")
    ask = ask_loop(args.bundle, image, env, args.ask_runs, args.max_tokens)
    proc, port = start([sys.executable, "-m", "huatuo_cli", "serve", "--model", str(args.bundle), "--port", "0",
                        "--queue", "64", *threads], env, r"listening on http://127\.0\.0\.1:(\d+)", home / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        stream_one(base, body)  # warm-up
        serve = {n: round_of(base, body, n, args.requests) for n in levels}
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{'':24}{'requests/s':>12}{'TTFT median':>14}{'rps vs ask':>12}{'TTFT vs ask':>13}")
    print(f"{'huatuo ask (loop)':24}{ask['rps']:12.2f}{ask['ttft'] * 1000:12.0f}ms{1.0:12.2f}{1.0:13.2f}")
    for n, r in serve.items():
        print(f"{f'huatuo serve, {n} clients':24}{r['rps']:12.2f}{r['ttft'] * 1000:12.0f}ms"
              f"{r['rps'] / ask['rps']:12.2f}{r['ttft'] / ask['ttft']:13.3f}")
    try:
        import llama_cpp.server.app  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import means: not measured
        print(f"# llama-cpp-python's server: not measured (its [server] extra does not import here: "
              f"{type(exc).__name__}: {exc})")
    else:
        print("# llama-cpp-python's server imports; run it on the bundle's llm GGUF with "
              "`python -m llama_cpp.server --model BUNDLE/llm-*.gguf` and point this script's text-only mode at it")
    print(json.dumps({"ask": ask, "serve": serve}))


if __name__ == "__main__":
    main()
