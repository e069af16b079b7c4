"""The native engines on a minimal workstation (issue 26): they need neither GCC's OpenMP runtime nor
OpenSSL, and a library they do need that cannot be loaded is a clear message naming it and what to do,
never a traceback, from ask, batch and doctor. Libraries are removed from their folders in a private
mount namespace (an overlay whose whiteouts hide them)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from huatuo_cli.extras import native_failure

LIB = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"  # not imported
HUATUO = Path(sys.executable).parent / "huatuo"
#: what a minimal workstation may lack and the engine must not need (issue 26): GCC's OpenMP runtime and
#: OpenSSL (the engine never touches the network)
UNNEEDED = ("libgomp.so.1", "libssl.so.3", "libcrypto.so.3")


def _system_library(soname: str) -> Path:
    """Where this machine's dynamic loader finds `soname` (ldconfig's cache)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^\s*{re.escape(soname)} \(libc6,x86-64\) => (\S+)$", out, re.M)
    assert match, f"{soname} is not installed here, so hiding it proves nothing"
    return Path(match.group(1))


def hidden(tmp_path: Path, files: list[Path], command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `command` where each folder holding one of `files` shows every file but those (and their
    other names): an overlay whose whiteouts hide them, in a private mount namespace."""
    if os.geteuid() != 0:
        pytest.fail("needs root (unshare -m and mount; CI runs as root)")
    mounts, checks = [], []
    for n, folder in enumerate(sorted({f.resolve().parent for f in files})):
        upper, work = tmp_path / f"upper{n}", tmp_path / f"work{n}"
        upper.mkdir(parents=True)
        work.mkdir()
        for f in files:
            if f.resolve().parent == folder:
                stem = f.name.split(".so")[0] + ".so"
                for name in sorted(p.name for p in folder.glob(stem + "*")):
                    os.mknod(upper / name, 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout: gone
                checks.append(f"! ls {folder}/{f.name} 2>/dev/null")
        mounts.append(f"mount -t overlay overlay -o lowerdir={folder},upperdir={upper},workdir={work} {folder}")
    script = " && ".join([*mounts, *checks, 'exec "$@"'])
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    return path


def test_the_engine_answers_without_openmp_or_openssl(tiny_bundle, tmp_path, env, scan):
    """The llama.cpp build uses ggml's own thread pool and no HTTPS: a workstation without libgomp,
    libssl and libcrypto answers, and answers the same."""
    ask = [str(HUATUO), "ask", "--model", str(tiny_bundle), "--max-tokens", "6", "--json", str(scan), "Any effusion?"]
    normal = subprocess.run(ask, capture_output=True, text=True, env=env, timeout=600)
    assert normal.returncode == 0, normal.stderr[-3000:]
    bare = hidden(tmp_path / "h", [_system_library(name) for name in UNNEEDED], ask, env)
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert json.loads(bare.stdout)["answer"] == json.loads(normal.stdout)["answer"]
    doctor = hidden(tmp_path / "d", [_system_library(name) for name in UNNEEDED], [str(HUATUO), "doctor", "--json"], env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["llama.cpp"]["status"] != "fail", checks["llama.cpp"]


def _clear(res: subprocess.CompletedProcess, where: str) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert "libggml-base.so.0 cannot open shared object file" in where, where[-3000:]
    assert "reinstall huatuo" in where


def test_ask_and_batch_name_the_missing_library(tiny_bundle, tmp_path, env, scan):
    """A native library that cannot be loaded (here the engine's own base library, as after a partial
    copy) is one clear line naming it, from ask and batch."""
    ask = hidden(tmp_path / "a", [LIB / "libggml-base.so"], [str(HUATUO), "ask", "--model", str(tiny_bundle),
                                                           "--max-tokens", "4", str(scan), "Any effusion?"], env)
    assert ask.returncode == 1
    _clear(ask, ask.stderr)
    studies = tmp_path / "studies" / "one"
    studies.mkdir(parents=True)
    (studies / "scan.png").write_bytes(scan.read_bytes())
    batch = hidden(tmp_path / "b", [LIB / "libggml-base.so"], [str(HUATUO), "batch", str(studies.parent), "--out",
                                                             str(tmp_path / "out"), "--model", str(tiny_bundle),
                                                             "-q", "Describe.", "--max-tokens", "4"], env)
    assert batch.returncode != 0
    _clear(batch, batch.stderr)


def test_doctor_reports_it_as_a_failed_check(tmp_path, env):
    res = hidden(tmp_path, [LIB / "libggml-base.so"], [str(HUATUO), "doctor", "--json"], env)
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["llama.cpp"]["status"] == "fail"
    _clear(res, checks["llama.cpp"]["detail"])


@pytest.mark.parametrize("message,expected", [
    ("Failed to load shared library '/x/libllama.so': libgomp.so.1: cannot open shared object file: No such file",
     "libgomp.so.1 cannot open shared object file"),
    ("/usr/lib/libstdc++.so.6: version `GLIBCXX_3.4.30' not found (required by /x/libllama.so)", "needs GLIBCXX_3.4.30"),
    ("libfoo.so.2: cannot open shared object file: No such file or directory", "libfoo.so.2 cannot open"),
    ("/x/libllama.so: libggml-base.so: cannot open shared object file", "libggml-base.so cannot open"),
])
def test_loader_messages_become_clear_errors(message, expected):
    error = native_failure("llama_cpp", RuntimeError(message))
    assert error is not None and expected in str(error) and error.hint


def test_other_failures_are_left_alone():
    """Not a loader message: a bug, which may crash."""
    assert native_failure("llama_cpp", RuntimeError("llama_decode returned -1")) is None
