"""`huatuo serve` under 1, 4 and 16 concurrent clients vs `huatuo ask` in a loop, and vs
llama-cpp-python's own server (`python -m llama_cpp.server`, its `[server]` extra's packages: `pip install -e '.[bench]'`)
on the bundle's GGUF with text-only requests (it has no huatuo vision path), same threads.

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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rounds(base: str, body: dict, levels: tuple[int, ...], requests: int) -> dict[int, dict[str, float]]:
    stream_one(base, body)  # warm-up
    return {n: round_of(base, body, n, requests) for n in levels}


def llama_cpp_server(gguf: Path, threads: int, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    return start([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                  "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads), "--n_threads_batch",
                  str(threads), "--chat_format", "chatml",
                  # its default cancels a streaming answer when the next request arrives; queue instead, as huatuo does
                  "--interrupt_requests", "False"], env, r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log)


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
    threads = args.threads or os.cpu_count() or 1
    text_body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": args.max_tokens,
                 "temperature": 0, "stream": True}
    levels = (1, 4, 16)
    print(f"# huatuo serve vs huatuo ask in a loop: {args.bundle.name}, 1 image + 1 question, --max-tokens "
          f"{args.max_tokens}, {args.requests} requests per level, {threads} threads; {cpu_name()}, {os.cpu_count()} CPUs")
    ask = ask_loop(args.bundle, image, env, args.ask_runs, args.max_tokens)
    proc, port = start([sys.executable, "-m", "huatuo_cli", "serve", "--model", str(args.bundle), "--port", "0",
                        "--queue", "64", "--threads", str(threads)], env, r"listening on http://127\.0\.0\.1:(\d+)",
                       home / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        serve = rounds(base, body, levels, args.requests)
        serve_text = rounds(base, text_body, levels, args.requests)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{'':30}{'requests/s':>12}{'TTFT median':>14}{'rps vs ask':>12}{'TTFT vs ask':>13}")
    print(f"{'huatuo ask (loop), image':30}{ask['rps']:12.2f}{ask['ttft'] * 1000:12.0f}ms{1.0:12.2f}{1.0:13.2f}")
    for n, r in serve.items():
        print(f"{f'huatuo serve, image, {n} clients':30}{r['rps']:12.2f}{r['ttft'] * 1000:12.0f}ms"
              f"{r['rps'] / ask['rps']:12.2f}{r['ttft'] / ask['ttft']:13.3f}")
    peer: dict[int, dict[str, float]] = {}
    try:
        import llama_cpp.server.app  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import means: not measured
        print(f"# llama-cpp-python's server: not measured (its [server] extra does not import here: "
              f"{type(exc).__name__}: {exc})")
    else:
        gguf = next(args.bundle.glob("llm-*.gguf"))
        proc, port = llama_cpp_server(gguf, threads, env, home / "llama-server.log")
        try:
            peer = rounds(f"http://127.0.0.1:{port}", text_body, levels, args.requests)
        finally:
            proc.terminate()
            proc.wait(30)
        print("# text only, same GGUF and threads: huatuo serve vs llama-cpp-python's server")
        print(f"{'':30}{'requests/s':>12}{'TTFT median':>14}{'rps ratio':>12}{'TTFT ratio':>13}")
        for n in levels:
            h, p = serve_text[n], peer[n]
            print(f"{f'llama-cpp server, {n} clients':30}{p['rps']:12.2f}{p['ttft'] * 1000:12.0f}ms{1.0:12.2f}{1.0:13.2f}")
            print(f"{f'huatuo serve, {n} clients':30}{h['rps']:12.2f}{h['ttft'] * 1000:12.0f}ms"
                  f"{h['rps'] / p['rps']:12.2f}{h['ttft'] / p['ttft']:13.3f}")
    print(json.dumps({"ask": ask, "serve": serve, "serve_text": serve_text, "llama_cpp_server_text": peer}))


if __name__ == "__main__":
    main()
