"""`huatuo batch --ray` against a local `huatuo batch` on the same studies: throughput and overhead.

Starts a two-node Ray cluster on 127.0.0.1 (tests/ray_cluster.py: one CPU and a 100 MB object
store per node), then runs the real `huatuo batch` command as a subprocess, each into a fresh OUT:
locally, with `--ray --ray-actors 1` and with `--ray --ray-actors 2` (one actor per node). Model:
the tiny synthetic F16 bundle of the test suite (`huatuo convert synth` + `convert all`), so the
model's own time is small and what is measured is mostly the cluster's cost: connecting, starting
actors (each loads and verifies the bundle), shipping answers and thumbnails' images back.
Wall times include everything (scan, model load, reports). "Overhead per study" is
(wall with 1 actor - local wall) / studies. On a 2-core machine two actors share the cores with
the driver, so 2 actors cannot be twice 1; on GPU nodes each actor has its own GPU.

    PYTHONPATH=$PWD python bench/bench_batch_ray.py --studies 16 --max-tokens 16
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ray_cluster import LocalCluster  # noqa: E402

HUATUO = str(Path(sys.executable).with_name("huatuo"))
QUESTIONS = ("Describe the findings.", "Is there any abnormality?")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def make_studies(root: Path, n: int) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for i in range(n):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.PixelData = bytes((b + i) % 256 for b in ds.PixelData)
        (root / f"st{i:03d}").mkdir(parents=True)
        ds.save_as(root / f"st{i:03d}" / "IM0")


def tiny_bundle(work: Path) -> Path:
    subprocess.run([HUATUO, "convert", "synth", str(work / "ckpt"), "--arch", "llava-qwen2", "--vision-layout", "folder"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([HUATUO, "convert", "all", str(work / "ckpt"), str(work / "bundle"), "--quant", "f16"], check=True,
                   stdout=subprocess.DEVNULL)
    return work / "bundle"


def timed_batch(studies: Path, out: Path, bundle: Path, tokens: int, env: dict[str, str], *extra: str) -> float:
    args = [HUATUO, "batch", str(studies), "--out", str(out), "--model", str(bundle), "--max-tokens", str(tokens)]
    for q in QUESTIONS:
        args += ["-q", q]
    t0 = time.perf_counter()
    subprocess.run(args + list(extra), check=True, env=env, capture_output=True, timeout=3600)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", XDG_DATA_HOME=str(work / "data"),
               XDG_CONFIG_HOME=str(work / "config"), XDG_CACHE_HOME=str(work / "cache"))
    try:
        bundle = tiny_bundle(work)
        make_studies(work / "studies", args.studies)
        cluster = LocalCluster(work, nodes=2, env={k: env[k] for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")})
        try:
            walls = {
                "local": timed_batch(work / "studies", work / "local", bundle, args.max_tokens, env),
                "ray, 1 actor": timed_batch(work / "studies", work / "ray1", bundle, args.max_tokens, env,
                                            "--ray", cluster.address, "--ray-actors", "1"),
                "ray, 2 actors": timed_batch(work / "studies", work / "ray2", bundle, args.max_tokens, env,
                                             "--ray", cluster.address, "--ray-actors", "2"),
            }
        finally:
            cluster.stop()
        n = args.studies
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {n} studies x {len(QUESTIONS)} questions, "
              f"--max-tokens {args.max_tokens}, tiny synthetic F16 bundle; 2 Ray nodes of 1 CPU each on 127.0.0.1")
        print(f"{'run':<16}{'wall s':>8}{'studies/s':>11}{'vs local':>10}")
        for name, wall in walls.items():
            print(f"{name:<16}{wall:>8.1f}{n / wall:>11.2f}{walls['local'] / wall:>9.2f}x")
        print(f"overhead per study, 1 actor vs local: {(walls['ray, 1 actor'] - walls['local']) / n:.2f} s; "
              f"2 actors vs 1 actor: {walls['ray, 1 actor'] / walls['ray, 2 actors']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
