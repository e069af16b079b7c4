"""bench/gpu_check.py, the proof a lent GPU machine runs (issue 26): here, with no GPU, it must say
that nothing was proven (exit 2), never pass; and its judgement of records is checked on real CPU
records of the tiny bundle, edited as a GPU run that fell back or diverged would read."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_a_gpu_nothing_is_proven(tiny_bundle):
    if gpu_check.gpus():
        pytest.fail("this test is for machines without a GPU; on a GPU machine run bench/gpu_check.py itself")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tiny_bundle)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "nothing proven" in done.stderr


@pytest.fixture(scope="module")
def cpu_records(tiny_bundle) -> list[dict]:
    from demo.samples import sample_file

    return [gpu_check.ask(tiny_bundle, sample_file(), "cpu") for _ in range(2)]


def _as_gpu(record: dict, **provider) -> dict:
    gpu = copy.deepcopy(record)
    gpu["provider"].update({"vision": "CUDAExecutionProvider", "vision_note": None, "llm_gpu_offload": True,
                            **provider})
    gpu["timings"] = {k: v / 4 for k, v in gpu["timings"].items()}
    return gpu


def test_a_gpu_run_that_matches_passes_with_its_speedup(cpu_records):
    assert "error" not in cpu_records[0] and cpu_records[0]["provider"]["llm_gpu_offload"] is False
    result = gpu_check.judge("cuda", cpu_records, [_as_gpu(r) for r in cpu_records])
    assert result["ok"] and result["speedup"] == pytest.approx(4.0)  # the timed runs: the second of each


@pytest.mark.parametrize("change,failed", [
    ({"llm_gpu_offload": False}, "offload"),  # llama.cpp's CUDA backend did not load: the CPU answered
    ({"vision": "CPUExecutionProvider", "vision_note": "CUDA provider failed; CPU used"}, "encoder"),
])
def test_a_fallback_is_a_failure(cpu_records, change, failed):
    result = gpu_check.judge("cuda", cpu_records, [_as_gpu(r, **change) for r in cpu_records])
    assert not result["ok"] and result["failed"] == [failed]


def test_a_different_answer_is_a_failure(cpu_records):
    gpu = [_as_gpu(r) for r in cpu_records]
    gpu[-1]["answer"] += " (diverged)"
    result = gpu_check.judge("cuda", cpu_records, gpu)
    assert result["failed"] == ["answer"]
