"""A system library the native engines need that cannot be loaded is a clear message naming it and
what to install, never a traceback (issue 26): from ask, batch and doctor, with libgomp removed from
the system's library folder in a private mount namespace (an overlay whose whiteouts hide it, as
on a minimal workstation without GCC's OpenMP runtime)."""

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

LIBLLAMA = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib" / "libllama.so"  # not imported
HUATUO = Path(sys.executable).parent / "huatuo"


def _libgomp() -> Path:
    """The libgomp file libllama.so is linked against on this machine (from ldd)."""
    out = subprocess.run(["ldd", str(LIBLLAMA)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"libgomp\.so\.1 => (\S+)", out)
    assert match, f"libllama.so does not load libgomp here:\n{out}"
    return Path(match.group(1)).resolve()


def without_libgomp(tmp_path: Path, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `command` where the folder holding libgomp shows every file but libgomp's."""
    if os.geteuid() != 0:
        pytest.fail("needs root (unshare -m and mount; CI runs as root)")
    folder = _libgomp().parent
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    for name in sorted(p.name for p in folder.glob("libgomp.so*")):
        os.mknod(upper / name, 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout: the file is gone
    script = (f"mount -t overlay overlay -o lowerdir={folder},upperdir={upper},workdir={work} {folder} && "
              f"! ls {folder}/libgomp.so.1 2>/dev/null && exec \"$@\"")
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}


def _clear(res: subprocess.CompletedProcess, where: str) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert "libgomp.so.1 cannot open shared object file" in where, where[-3000:]
    assert "apt install libgomp1" in where and "dnf install libgomp" in where


def test_ask_and_batch_name_the_missing_library(tiny_bundle, tmp_path, env):
    scan = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)).save(scan)
    ask = without_libgomp(tmp_path / "a", [str(HUATUO), "ask", "--model", str(tiny_bundle), "--max-tokens", "4",
                                           str(scan), "Any effusion?"], env)
    assert ask.returncode == 1
    _clear(ask, ask.stderr)
    studies = tmp_path / "studies" / "one"
    studies.mkdir(parents=True)
    (studies / "scan.png").write_bytes(scan.read_bytes())
    batch = without_libgomp(tmp_path / "b", [str(HUATUO), "batch", str(studies.parent), "--out", str(tmp_path / "out"),
                                             "--model", str(tiny_bundle), "-q", "Describe.", "--max-tokens", "4"], env)
    assert batch.returncode != 0
    _clear(batch, batch.stderr)


def test_doctor_reports_it_as_a_failed_check(tmp_path, env):
    res = without_libgomp(tmp_path, [str(HUATUO), "doctor", "--json"], env)
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["llama.cpp"]["status"] == "fail"
    _clear(res, checks["llama.cpp"]["detail"])


@pytest.mark.parametrize("message,expected", [
    ("Failed to load shared library '/x/libllama.so': libgomp.so.1: cannot open shared object file: No such file",
     "libgomp.so.1 cannot open shared object file"),
    ("/usr/lib/libstdc++.so.6: version `GLIBCXX_3.4.30' not found (required by /x/libllama.so)", "needs GLIBCXX_3.4.30"),
    ("libfoo.so.2: cannot open shared object file: No such file or directory", "libfoo.so.2 cannot open"),
])
def test_loader_messages_become_clear_errors(message, expected):
    error = native_failure("llama_cpp", RuntimeError(message))
    assert error is not None and expected in str(error) and error.hint


def test_other_failures_are_left_alone():
    """Not a loader message: a bug, which may crash."""
    assert native_failure("llama_cpp", RuntimeError("llama_decode returned -1")) is None
