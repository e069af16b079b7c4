"""Fuzz: a few hundred mutated copies of pydicom's test files through `inspect` and `batch`.

Fixed seed, bounded (about a minute or two): each copy gets fresh UIDs (so it is a study of its
own rather than a duplicate), then one mutation: random bytes changed (mostly in the header), a
VR replaced, a cut at a random point, a chunk removed or repeated. The promises checked: no
traceback from either command, every file is either part of an answered study or named by
exactly one error line, and the batch completes; its rerun resumes to completion and adds nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.imaging.scan import scan
from tests.damaged_files import fresh_copy
from tests.paths import ROOT

SEED = 20261125
COPIES = 300
SOURCES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm", "SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_gdcm_KY.dcm",
    "JPEG2000.dcm", "emri_small_RLE.dcm", "SC_jpeg_no_color_transform.dcm", "rtplan.dcm", "rtdose.dcm",
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["bytes", "bytes", "vr", "cut", "chunk"])
    if kind == "bytes":
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(132, min(len(b), 2048)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[at] = rng.randrange(256)
    elif kind == "vr":  # an element's two VR letters replaced by other letters
        spots = [i for i in range(132, min(len(b), 4096) - 1) if 65 <= b[i] <= 90 and 65 <= b[i + 1] <= 90]
        if spots:
            at = rng.choice(spots)
            b[at:at + 2] = bytes(rng.randrange(65, 91) for _ in range(2))
    elif kind == "cut":
        del b[rng.randrange(132, len(b)):]
    else:
        start = rng.randrange(132, len(b))
        length = rng.randint(1, 64)
        if rng.random() < 0.5:
            del b[start:start + length]
        else:
            b[start:start] = b[start:start + length]
    return bytes(b)


def fuzz_folder(root: Path) -> list[Path]:
    rng = random.Random(SEED)
    files = []
    for i in range(COPIES):
        name = SOURCES[i % len(SOURCES)]
        path = fresh_copy(name, root / f"f{i:03d}" / Path(name).stem)
        path.write_bytes(mutate(path.read_bytes(), rng))
        files.append(path)
    return files


def huatuo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUST_BACKTRACE": "0"}
    return subprocess.run([sys.executable, "-m", "huatuo_cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_fuzzed_files_inspect_and_batch_never_trace_back_and_account_for_every_file(tmp_path, tiny_bundle):
    root = tmp_path / "fuzz"
    files = fuzz_folder(root)
    inspected = huatuo("inspect", str(root), "--count", "1")
    assert inspected.returncode in (0, 1), inspected.stderr[-2000:]
    assert "Traceback" not in inspected.stderr + inspected.stdout, inspected.stderr[-4000:]

    out = tmp_path / "out"
    batch = ["batch", str(root), "--out", str(out), "--model", str(tiny_bundle), "-q", "Findings?",
             "--max-tokens", "1", "--images", "1"]
    first = huatuo(*batch)
    assert first.returncode in (0, 1), first.stderr[-4000:]
    assert "Traceback" not in first.stderr + first.stdout, first.stderr[-4000:]
    results, errors = read_jsonl(out / RESULTS_NAME), read_jsonl(out / ERRORS_NAME)

    answered = {r["study"] for r in results}
    file_lines = Counter(e["key"] for e in errors if e["kind"] == "file")
    study_lines = Counter((e["key"], e["question"]) for e in errors if e["kind"] == "study")
    assert max(file_lines.values(), default=1) == 1 and max(study_lines.values(), default=1) == 1
    failed_studies = {key for key, _ in study_lines}
    study_of = {}
    for study in scan(root).studies:
        for instance in (i for s in study.series for i in s.instances):
            study_of[instance.path] = study.key
    for path in files:
        rel = os.path.relpath(path, root)
        if rel in file_lines:
            continue
        key = study_of.get(path)
        assert key is not None, f"{rel}: neither an error line nor in a study"
        assert (key in answered) != (key in failed_studies), f"{rel}: study {key} answered and failed, or neither"
    assert len(answered) > COPIES // 4  # the fuzz is not so hard that nothing is left to answer

    again = huatuo(*batch)  # a resume completes and adds nothing
    assert again.returncode == first.returncode, again.stderr[-4000:]
    assert "Traceback" not in again.stderr
    assert read_jsonl(out / RESULTS_NAME) == results and read_jsonl(out / ERRORS_NAME) == errors
    summary = json.dumps([len(results), len(errors)])
    print(f"fuzz: {COPIES} files, [answers, error lines] = {summary}")
