"""`huatuo batch --ray` on a real two-node Ray cluster on 127.0.0.1 (tests/ray_cluster.py).

The tiny bundle answers greedily, so a Ray run's answers must equal a local run's byte for byte.
Faults are real: a worker node's processes killed with SIGKILL mid-run, and the driver killed with
SIGKILL mid-run and the command rerun (without --ray). Nothing may be lost or written twice.
The cluster's nodes run with XDG dirs of their own, so the actors' audit trail is read there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from huatuo_cli import audit
from tests.batch_helpers import sample_folder
from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.slow

HUATUO = str(Path(sys.executable).with_name("huatuo"))
QUESTIONS = ["Describe the findings.", "Any abnormality?"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("ray-nodes")
    env = {var: str(home / var.lower()) for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")}
    env["HUATUO_VISION_PRECISION"] = "fp32"  # the actors answer as the local run (conftest pins it per test)
    started = LocalCluster(home, nodes=2, env=env)
    started.data_home = Path(env["XDG_DATA_HOME"])  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        started.stop()


def many_studies(root: Path, count: int) -> Path:
    """`count` one-image studies (the CT sample under new UIDs): enough work to kill something mid-run."""
    root.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for i in range(count):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.PixelData = bytes((b + i) % 256 for b in ds.PixelData)  # different pixels: different answers
        (root / f"st{i:02d}").mkdir(exist_ok=True)
        ds.save_as(root / f"st{i:02d}" / "IM0")
    return root


def batch_cmd(folder: Path, out: Path, bundle: Path, *extra: str, tokens: int = 8) -> list[str]:
    args = [HUATUO, "batch", str(folder), "--out", str(out), "--model", str(bundle), "--max-tokens", str(tokens)]
    for q in QUESTIONS:
        args += ["-q", q]
    return args + list(extra)


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=900, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))


def results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def answers(out: Path) -> dict[tuple[str, str], str]:
    recs = results(out)
    pairs = Counter((r["study"], r["question"]) for r in recs)
    assert all(n == 1 for n in pairs.values()), f"answers written twice: {[p for p, n in pairs.items() if n > 1]}"
    return {(r["study"], r["question"]): r["answer"] for r in recs}


def node_audit(cluster) -> list[dict]:
    return audit.read_entries(cluster.data_home / "huatuo" / audit.LOG_NAME)


def wait_for(predicate, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def test_ray_answers_equal_a_local_run(tmp_path, tiny_bundle, cluster):
    """Same answers, same error lines (a study failing on a node is its error line), the same OUT files;
    every answer audited on its node: command "batch", the node id."""
    folder = sample_folder(tmp_path / "studies")
    seen = len(node_audit(cluster)) if (cluster.data_home / "huatuo" / audit.LOG_NAME).exists() else 0
    local = run(batch_cmd(folder, tmp_path / "local", tiny_bundle))
    remote = run(batch_cmd(folder, tmp_path / "ray", tiny_bundle, "--ray", cluster.address))
    assert local.returncode == remote.returncode == 1, (local.stderr, remote.stderr)  # the broken study
    assert "on node" in remote.stderr and "answers/s" in remote.stderr
    assert answers(tmp_path / "ray") == answers(tmp_path / "local") and len(answers(tmp_path / "local")) == 6

    def errors(out: Path) -> list[dict]:
        return sorted((json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()), key=str)

    assert errors(tmp_path / "ray") == errors(tmp_path / "local")
    assert any(e["kind"] == "study" and e["files"] == ["broken/IM9999"] for e in errors(tmp_path / "ray"))
    listing = sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*"))
    assert sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*")) == listing
    entries = [e for e in node_audit(cluster)[seen:] if e.get("outcome") == "ok"]
    assert len(entries) == 6 and {e["command"] for e in entries} == {"batch"}
    assert all(len(e["node"]) > 20 for e in entries)  # Ray's node id (hex)
    # a rerun with --ray resumes: nothing pending, no model loaded anywhere, nothing new
    again = run(batch_cmd(folder, tmp_path / "ray", tiny_bundle, "--ray", cluster.address))
    assert "0 answered, 6 done earlier" in again.stderr and len(results(tmp_path / "ray")) == 6


def test_driver_killed_mid_run_resumes_without_ray(tmp_path, tiny_bundle, cluster):
    folder = many_studies(tmp_path / "studies", 10)
    reference = run(batch_cmd(folder, tmp_path / "local", tiny_bundle, tokens=24))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "ray"
    driver = subprocess.Popen(batch_cmd(folder, out, tiny_bundle, "--ray", cluster.address, tokens=24),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    try:
        wait_for(lambda: len(results(out)) >= 3 or driver.poll() is not None)
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(60)
    assert 3 <= len(results(out)) < 20
    resumed = run(batch_cmd(folder, out, tiny_bundle, tokens=24))  # without --ray
    assert resumed.returncode == 0, resumed.stderr
    assert answers(out) == answers(tmp_path / "local") and len(answers(out)) == 20


def test_worker_node_killed_mid_run_is_retried_on_the_nodes_left(tmp_path, tiny_bundle, cluster):
    """The second node dies (SIGKILL to all its processes) while it holds a study: that study is
    answered by the head's actor, every answer once. Runs last: the cluster keeps one node."""
    folder = many_studies(tmp_path / "studies", 10)
    reference = run(batch_cmd(folder, tmp_path / "local", tiny_bundle, tokens=24))
    out = tmp_path / "ray"
    driver = subprocess.Popen(batch_cmd(folder, out, tiny_bundle, "--ray", cluster.address, tokens=24),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    worker_node: set[str] = set()
    seen = len(node_audit(cluster)) if (cluster.data_home / "huatuo" / audit.LOG_NAME).exists() else 0

    def second_node_answered() -> bool:
        nodes = {e.get("node") for e in node_audit(cluster)[seen:]} - {None}
        return len(nodes) >= 2 and len(results(out)) >= 3 or driver.poll() is not None

    try:
        wait_for(second_node_answered)
        assert driver.poll() is None, "the batch finished before a node could be killed"
        before = {e["node"] for e in node_audit(cluster)[seen:] if e.get("node")}
        cluster.kill_node(1)
        worker_node = before
        _, stderr = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    assert reference.returncode == 0
    assert answers(out) == answers(tmp_path / "local") and len(answers(out)) == 20, stderr
    assert len(worker_node) == 2


def test_shipped_studies_give_the_same_answers(tmp_path, tiny_bundle, cluster):
    """--ray-ship: the driver decodes each study and sends the images to the actors (nodes that do
    not see the studies folder, and `--from PACS`); the answers equal a local run's."""
    folder = sample_folder(tmp_path / "studies")
    run(batch_cmd(folder, tmp_path / "local", tiny_bundle))
    shipped = run(batch_cmd(folder, tmp_path / "ray", tiny_bundle, "--ray", cluster.address, "--ray-ship"))
    assert shipped.returncode == 1, shipped.stderr  # the broken study, as locally
    assert answers(tmp_path / "ray") == answers(tmp_path / "local") and len(answers(tmp_path / "local")) == 6
