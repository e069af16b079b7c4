"""Nothing leaves the machine, native code included: `ask` and `batch` under strace, and doctor's check.

`strace -f -e trace=network` (Debian strace; Makefile system-deps) sees every network system call
of the process and its threads and children, whatever language made it. The runs get a fresh HOME
and XDG cache so that a telemetry file written anywhere under them is found.

The one system call allowed: glibc connecting to the name-service cache daemon's AF_UNIX socket
(/var/run/nscd/socket) to look up the user name for the audit trail (getpass.getuser ->
getpwuid). It is a local socket to a local daemon, the lookup every `ls -l` makes; nothing else,
AF_UNIX included, may appear.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.damaged_files import fresh_copy, pydicom_file
from tests.paths import ROOT

NSCD = "/var/run/nscd/socket"


def network_calls(trace: Path) -> list[str]:
    """Every network system call in the trace, except the nscd lookup (see the module docstring)."""
    calls = []
    unix_sockets = set()
    for line in trace.read_text().splitlines():
        text = re.sub(r"^\d+\s+", "", line)
        if not re.match(r"(socket|connect|sendto|sendmsg|sendmmsg|bind|listen|accept4?|socketpair)\(", text):
            continue
        fd = re.search(r"= (\d+)$", text)
        if text.startswith("socket(AF_UNIX") and fd:
            unix_sockets.add(fd.group(1))  # allowed only if it then connects to nscd
            calls.append(text)
            continue
        if text.startswith("connect(") and NSCD in text:
            calls = [c for c in calls if not (c.startswith("socket(AF_UNIX") and c.endswith(f"= {text[8:].split(',')[0]}"))]
            continue
        calls.append(text)
    return calls


def traced(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str], list[Path]]:
    if not shutil.which("strace"):
        pytest.fail("strace is needed (Debian package strace: make system-deps)")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "HF_", "DO_NOT_TRACK"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(ROOT))
    trace = tmp_path / "network.trace"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=network", "-o", str(trace),
                           sys.executable, "-m", "huatuo_cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    telemetry = [p for p in home.rglob("*") if "Microsoft" in p.parts or "onnxruntime" in p.name.lower()]
    return proc, network_calls(trace), telemetry


def test_ask_makes_no_network_call_and_writes_no_telemetry(tmp_path, tiny_bundle):
    proc, calls, telemetry = traced(tmp_path, "ask", "--model", str(tiny_bundle), "--max-tokens", "4",
                                    str(pydicom_file("CT_small.dcm")), "Is there an effusion?")
    assert proc.returncode == 0, proc.stderr
    assert calls == [], calls
    assert telemetry == [], telemetry


def test_batch_makes_no_network_call_and_writes_no_telemetry(tmp_path, tiny_bundle):
    root = tmp_path / "studies"
    fresh_copy("CT_small.dcm", root / "a" / "IM1")
    fresh_copy("MR_small.dcm", root / "b" / "IM1")
    proc, calls, telemetry = traced(tmp_path, "batch", str(root), "--out", str(tmp_path / "out"),
                                    "--model", str(tiny_bundle), "-q", "Describe the findings.", "--max-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert calls == [], calls
    assert telemetry == [], telemetry


def test_the_trace_reader_sees_what_it_must(tmp_path):
    """The oracle itself: an Internet socket and a stray AF_UNIX one are found, nscd is not."""
    trace = tmp_path / "t"
    trace.write_text(
        '10 socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 5\n'
        f'10 connect(5, {{sa_family=AF_UNIX, sun_path="{NSCD}"}}, 110) = -1 ENOENT (No such file or directory)\n'
        '11 socket(AF_INET6, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3\n'
        '11 socket(AF_UNIX, SOCK_DGRAM, 0) = 7\n')
    assert network_calls(trace) == ["socket(AF_INET6, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3",
                                     "socket(AF_UNIX, SOCK_DGRAM, 0) = 7"]


def test_doctor_checks_offline_in_a_child_without_network_and_says_what_it_checked(tmp_path, tiny_bundle):
    env = {**os.environ, "HUATUO_MODEL": str(tiny_bundle), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "huatuo_cli", "doctor", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    offline = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["offline"]
    assert offline["status"] == "ok", offline
    detail = offline["detail"]
    for claim in ("0 network system calls", "child process", "network namespace (unshare -n)",
                  "strace -f -e trace=network", "no telemetry file written", "Python sockets refused"):
        assert claim in detail, (claim, detail)


def test_doctor_offline_check_catches_native_network_use(tmp_path, tiny_bundle):
    """A library that opens an Internet socket at start-up (here: a sitecustomize, as native
    telemetry would, below Python's socket module patches) turns the offline line to fail."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import _socket\n"  # the C module: under the reach of the in-process patches
        "s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)\n"
        "try:\n    s.sendto(b'x', ('192.0.2.1', 9))\nexcept OSError:\n    pass\n")
    env = {**os.environ, "HUATUO_MODEL": str(tiny_bundle), "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-m", "huatuo_cli", "doctor", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    offline = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["offline"]
    assert offline["status"] == "fail" and "network system calls" in offline["detail"], offline


def test_hugging_face_telemetry_is_off_once_huatuo_is_imported():
    """The convert server imports transformers / huggingface_hub after huatuo_cli."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    proc = subprocess.run([sys.executable, "-c", "import huatuo_cli, huggingface_hub.constants as c; "
                           "print(c.HF_HUB_DISABLE_TELEMETRY)"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr
