"""`huatuo doctor`: runs on this machine, reports JSON, verifies installed bundles, blocks network."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from huatuo_cli.bundles.locate import models_dirs
from huatuo_cli.cli import cli
from huatuo_cli.offline import NetworkBlocked, no_network
from tests.bundle_helpers import make_bundle


def doctor_json() -> tuple[int, dict]:
    res = CliRunner().invoke(cli, ["doctor", "--json"])
    assert "Traceback" not in res.output
    return res.exit_code, json.loads(res.output)


def test_doctor_json_reports_every_area_and_verifies_bundles():
    root = make_bundle(models_dirs()[0] / "tiny")
    code, report = doctor_json()
    assert report["schema"] == "huatuo.doctor/1" and code == 0 and report["ok"]
    checks = {c["name"]: c for c in report["checks"]}
    assert {"cpu", "memory", "gpu", "onnxruntime", "llama.cpp", "offline", "bundle tiny"} <= set(checks)
    assert "CPUExecutionProvider" in checks["onnxruntime"]["data"]["loading"]
    assert checks["onnxruntime CPUExecutionProvider"]["status"] == "ok"
    assert isinstance(checks["llama.cpp"]["data"]["gpu_offload"], bool)
    assert checks["offline"]["status"] == "ok" and checks["bundle tiny"]["status"] == "ok"
    # a damaged bundle fails the doctor
    data = bytearray((root / "llm.gguf").read_bytes())
    data[7] ^= 1
    (root / "llm.gguf").write_bytes(bytes(data))
    code, report = doctor_json()
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"] and checks["bundle tiny"]["status"] == "fail"
    assert "sha256 differs" in checks["bundle tiny"]["detail"]


def test_doctor_table_output():
    res = CliRunner().invoke(cli, ["doctor"])
    assert "onnxruntime" in res.output and "offline" in res.output and "Traceback" not in res.output


def test_no_network_blocks_and_records_then_restores():
    with no_network() as attempts:
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("192.0.2.1", 80), timeout=1)
        with pytest.raises(NetworkBlocked):
            socket.getaddrinfo("example.org", 443)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(NetworkBlocked):
            s.connect(("192.0.2.1", 80))
        s.close()
        a, b = socket.socketpair()  # local sockets stay usable
        a.close(), b.close()
    assert attempts == ["create_connection", "getaddrinfo", "socket.connect"]
    assert socket.getaddrinfo("localhost", 80)  # restored


def test_offline_fixture_blocks_sockets(no_network):
    with pytest.raises(OSError):
        socket.socket()
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.1", 80))
    assert len(no_network) == 2


def test_ray_check_says_installed_and_reachable(monkeypatch):
    import socket

    from huatuo_cli.doctor import ray_check

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_check().status == "info" and "installed" in ray_check().detail
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert ray_check().status == "ok", ray_check()
    assert ray_check().status == "warn" and "not reachable" in ray_check().detail
