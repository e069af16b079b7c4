"""Which installed quantization of a model answers fastest on this CPU: measured, not guessed.

The order is not a property of the quantization: on an AMX CPU (Sapphire Rapids, the
sapphirerapids variant with weight repacking) Q8_0 prefills about 1.3x faster than Q4_K_M and
decodes faster too, while on AVX2 machines Q4_K_M usually wins (docs/cpu.md). So for every
installed bundle of a model, a short probe measures prefill and decode speed with the kernels this
process runs (`cpu_backend`), in a child process as the CPU self-test does (a kernel that crashes
kills the child, not the caller):

    python -m huatuo_cli.engine.quant_probe MODEL.gguf [--positions N] [--decode N] [--threads N]

The figures are kept in `~/.cache/huatuo/cpu-probe.json` beside the self-test's verdicts, under the
self-test's key of this machine and build plus the chosen variant and repacking, per LLM file
(its sha256 from the manifest): another CPU, build, variant or bundle is probed again, once.

The choice: the shortest estimated time for one image question (`tokens_per_image` + 64 prompt
positions prefilled, then 32 tokens decoded); within `TIE` of the fastest, the larger LLM file (more
bits per weight: the more faithful) wins. An explicit tag (`NAME:q8_0`) or a bundle path is never
second-guessed (`bundles.locate.find_bundle`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

from huatuo_cli import APP_NAME
from huatuo_cli.bundles.bundle import read_manifest
from huatuo_cli.bundles.locate import find_bundle
from huatuo_cli.errors import HuatuoError
from huatuo_cli.privacy import write_private

#: bump when the probe changes, so that old figures are not trusted
PROBE_VERSION = 1
PROBE_POSITIONS = 128  # prefilled in one batch (an image is 576 positions; 128 keeps the probe short)
PROBE_DECODE = 16  # tokens decoded one at a time after it
PROBE_TIMEOUT_S = 600  # a 7B Q8_0 file takes a while to read from a cold disk
#: the answer the estimate is for: one image plus a question, a short draft
PROMPT_EXTRA = 64
ANSWER_TOKENS = 32
#: bundles within this fraction of the fastest estimate count as equally fast: the larger file wins
TIE = 0.05


@dataclass
class Probe:
    prefill_tps: float
    decode_tps: float
    variant: str = ""  # the kernels it ran with ("sapphirerapids, repack on")
    threads: int = 0
    positions: int = PROBE_POSITIONS
    measured: str = ""  # when (UTC)

    def seconds(self, tokens_per_image: int = 576) -> float:
        """Estimated seconds for one image question: prefill, then a short answer."""
        return (tokens_per_image + PROMPT_EXTRA) / self.prefill_tps + ANSWER_TOKENS / self.decode_tps

    def line(self) -> str:
        return f"prefill {self.prefill_tps:.0f} tok/s, decode {self.decode_tps:.1f} tok/s"


def cache_path() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "cpu-probe.json"


def backend_key() -> str:
    """This machine and build (the self-test's key), and the kernels chosen on it."""
    from huatuo_cli.engine.cpu_backend import activate

    backend = activate()
    return f"v{PROBE_VERSION}:{backend.cache_key}:{backend.variant}:repack={int(backend.repack)}"


class ProbeCache:
    """LLM sha256 -> Probe for one backend key; an unreadable or other-key file is empty."""

    def __init__(self, key: str, path: Path | None = None) -> None:
        self.key = key
        self.path = path or cache_path()
        self.vision: dict[str, dict[str, dict[str, Any]]] = {}  # vision_choice.figures_key -> figures per way
        try:
            data = json.loads(self.path.read_text())
            stored = data.get("bundles", {}) if data.get("key") == key else {}
            self.probes = {sha: Probe(**fields) for sha, fields in stored.items()}
            self.vision = dict(data.get("vision", {})) if data.get("key") == key else {}
        except (OSError, ValueError, TypeError, AttributeError):
            self.probes = {}

    def get(self, sha256: str) -> Probe | None:
        return self.probes.get(sha256)

    def put(self, sha256: str, probe: Probe) -> None:
        self.probes[sha256] = probe
        self._write()

    def put_vision(self, key: str, figures: dict[str, dict[str, Any]]) -> None:
        self.vision[key] = figures
        self._write()

    def _write(self) -> None:
        data = {"key": self.key, "bundles": {sha: asdict(p) for sha, p in self.probes.items()}, "vision": self.vision}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.path, json.dumps(data, indent=2))
        except OSError:
            pass  # an unwritable cache costs a probe per run, nothing else


@dataclass
class Measured:
    path: Path
    quantization: str
    llm_size: int
    tokens_per_image: int
    probe: Probe | None
    error: str = ""

    @property
    def seconds(self) -> float | None:
        return self.probe.seconds(self.tokens_per_image) if self.probe else None


def _llm_entry(path: Path) -> tuple[str, Path, int, str, int]:
    manifest, _ = read_manifest(path)
    entry = manifest.file("llm")
    if entry is None:
        raise HuatuoError(f"bundle {path.name} lists no llm file")
    return entry.sha256, path / entry.path, entry.size, manifest.quantization, int(manifest.vision.get("tokens_per_image", 576))


def run_probe(gguf: Path, threads: int | None = None) -> Probe:
    """The probe child on one GGUF; HuatuoError if it died or failed."""
    cmd = [sys.executable, "-m", "huatuo_cli.engine.quant_probe", str(gguf)]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=dict(os.environ))
    except subprocess.TimeoutExpired as exc:
        raise HuatuoError(f"the speed probe of {gguf.name} took over {PROBE_TIMEOUT_S} s") from exc
    for line in reversed(proc.stdout.splitlines()):
        try:
            return Probe(**json.loads(line))
        except (ValueError, TypeError):
            continue
    tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
    raise HuatuoError(f"the speed probe of {gguf.name} failed (exit {proc.returncode}): {tail}")


def measure(paths: list[Path], *, run: bool = True, cache: ProbeCache | None = None) -> list[Measured]:
    """Each bundle's probe: from the cache, else (with `run`) measured now and remembered."""
    cache = cache or ProbeCache(backend_key())
    out = []
    for path in paths:
        sha, gguf, size, quant, tokens = _llm_entry(path)
        probe, error = cache.get(sha), ""
        if probe is None and run:
            try:
                probe = run_probe(gguf)
                cache.put(sha, probe)
            except HuatuoError as exc:
                error = str(exc)
        out.append(Measured(path, quant, size, tokens, probe, error))
    return out


def ranked(measured: list[Measured]) -> list[Measured]:
    """Fastest first; within TIE of the fastest, the larger LLM file (more faithful) first."""
    timed = [m for m in measured if m.seconds is not None]
    if not timed:
        return []
    best = min(m.seconds for m in timed if m.seconds is not None)
    return sorted(timed, key=lambda m: (m.seconds is None or m.seconds > best * (1 + TIE), -m.llm_size,
                                        m.seconds or 0.0))


def fastest(paths: list[Path]) -> Path:
    """The bundle among `paths` (quantizations of one checkpoint) that answers fastest on this CPU."""
    measured = measure(paths)
    order = ranked(measured)
    if not order:
        errors = "; ".join(m.error for m in measured if m.error)
        raise HuatuoError(f"no installed quantization could be measured on this CPU: {errors}",
                          hint="name one as NAME:TAG, or run `huatuo doctor`")
    return order[0].path


def find_model(explicit: str | os.PathLike[str] | None = None, *, option: str | None = "--model") -> Path:
    """`bundles.locate.find_bundle`, where a model named without a tag gets its fastest quantization here."""
    return find_bundle(explicit, option=option, choose=fastest)


def _main(argv: list[str]) -> int:
    import argparse
    import datetime as dt

    import numpy as np

    from huatuo_cli.engine.cpu_backend import describe, llama
    from huatuo_cli.engine.threads import default_threads

    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--positions", type=int, default=PROBE_POSITIONS)
    parser.add_argument("--decode", type=int, default=PROBE_DECODE)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = args.threads or default_threads()
    llama_cpp = llama()
    llm = llama_cpp.Llama(str(args.model), n_ctx=args.positions + args.decode + 16, n_batch=args.positions,
                          n_ubatch=min(512, args.positions), n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        ids: list[int] = np.random.default_rng(0).integers(0, llm.n_vocab(), args.positions + args.decode).tolist()
        llm.eval(ids[:8])  # warm-up: first touch of the weights, thread start
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids[: args.positions])
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for token in ids[args.positions:]:
            llm.eval([token])
        decode = time.perf_counter() - start
    finally:
        llm.close()
    probe = Probe(args.positions / prefill, args.decode / decode, describe(), threads, args.positions,
                  dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    print(json.dumps(asdict(probe)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
