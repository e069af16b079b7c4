"""What the CPU kernel self-test showed on this machine with this build: running it, remembering it.

The self-test itself is `huatuo_cli.engine.cpu_selftest`, always in a child process: a kernel that
crashes kills the child, and its death (SIGSEGV, SIGILL) is the verdict. Verdicts are kept in
`~/.cache/huatuo/cpu-selftest.json` under a key of the CPU (model name and the score ggml gives
every variant, so an emulated or different CPU is another machine) and of the build (each
library's size and mtime, the build key), so that a machine runs the self-test once per build.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import platformdirs

from huatuo_cli import APP_NAME
from huatuo_cli.privacy import write_private

SELFTEST_TIMEOUT_S = 120
#: tiny GGUFs in huatuo_cli/data that the self-test decodes (packaging/make_selftest_models.py)
SELFTEST_MODELS = ("selftest-q4_k_m.gguf", "selftest-q8_0.gguf")
#: their plain logits as the x64 variant computed them (packaging/make_selftest_models.py)
SELFTEST_EXPECTED: str | None = "selftest-expected.npz"
#: bump when the self-test changes, so that old verdicts are not trusted
SELFTEST_VERSION = 2


@dataclass
class Verdict:
    """Per stage, 'ok' or what went wrong: 'died (SIGSEGV)', 'mismatch (...)', 'failed (exit 1)'."""

    plain: str  # the variant's kernels, weight repacking off
    repack: str  # the same with weight repacking (AMX, AVX2/AVX-512 layouts)
    detail: str = ""  # the end of the child's stderr when it did not exit cleanly

    @property
    def usable(self) -> bool:
        return self.plain == "ok"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cache_key(scores: list[tuple[str, int]], variants_dir: Path, build_key: str | None) -> str:
    """This machine (CPU model, the score of each variant) and this build (the libraries' identity)."""
    identity = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(variants_dir.glob("libggml*.so"))]
    blob = json.dumps([SELFTEST_VERSION, cpu_model(), scores, identity, build_key], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class VerdictCache:
    """variant name -> Verdict for one cache key; an unreadable or other-key file is empty."""

    def __init__(self, key: str, path: Path | None = None) -> None:
        self.key = key
        self.path = path or Path(platformdirs.user_cache_dir(APP_NAME)) / "cpu-selftest.json"
        try:
            data = json.loads(self.path.read_text())
            stored = data.get("verdicts", {}) if data.get("key") == key else {}
        except (OSError, ValueError):
            stored = {}
        self.verdicts = {name: Verdict(**fields) for name, fields in stored.items()}

    def get(self, variant: str) -> Verdict | None:
        return self.verdicts.get(variant)

    def put(self, variant: str, verdict: Verdict) -> None:
        self.verdicts[variant] = verdict
        data = {"key": self.key, "verdicts": {name: v.__dict__ for name, v in self.verdicts.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.path, json.dumps(data, indent=2))
        except OSError:
            pass  # an unwritable cache costs a self-test per run, nothing else


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_selftest(variant_path: Path | None) -> Verdict:
    """Run the self-test child for one variant library (None: the build's own CPU backend)."""
    data = resources.files("huatuo_cli").joinpath("data")
    models = [str(data.joinpath(name)) for name in SELFTEST_MODELS]
    cmd = [sys.executable, "-m", "huatuo_cli.engine.cpu_selftest", str(variant_path or ""), *models]
    if SELFTEST_EXPECTED:  # None only while packaging/make_selftest_models.py makes these files
        cmd += ["--expected", str(data.joinpath(SELFTEST_EXPECTED))]
    try:
        # the child loads the variant under test itself: importing huatuo's llama_cpp build must not choose one
        env = {**os.environ, "HUATUO_LLAMA_AUTOLOAD": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return Verdict("timed out", "not run")
    stages = {}
    for line in proc.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        stages[item.get("stage")] = item
    died = f"died ({_signal_name(proc.returncode)})" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
    plain = stages.get("plain", {}).get("result") or died
    repack = stages.get("repack", {}).get("result") or (died if plain == "ok" else "not run")
    detail = "" if proc.returncode == 0 else proc.stderr.strip()[-300:]
    return Verdict(plain, repack, detail)
