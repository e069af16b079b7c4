"""One damaged file never stops a batch, never makes it un-resumable, and is named in errors.jsonl.

Damaged files are made from pydicom's test files (tests/damaged_files.py): an unknown VR read by
the scan and one read only when rendering, an RLE frame that makes pylibjpeg-rle (Rust) panic, and
pixel data cut short. A native decoder that kills the process is simulated by a study whose decode
sends itself SIGSEGV: that is what a segfaulting C decoder does, and no real file is known to.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.batch.runner import EXIT_SOME_FAILED, Job, run_batch
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.scan import scan
from tests.batch_helpers import MODEL, QUESTIONS, Counting, sample_folder
from tests.damaged_files import RESCALE_SLOPE, fresh_copy, good_copy, rle_panic, truncated_pixels, unknown_vr
from tests.paths import ROOT

DECODING_NAME = ".decoding"  # the marker a run leaves while it decodes a study (huatuo_cli.batch.results)


def damaged_folder(root: Path) -> dict[str, Path]:
    """Three good studies plus one damaged file of each kind, each a study of its own."""
    sample_folder(root, truncated=False, text_file=False)
    return {
        "unknown VR (scan)": unknown_vr(root / "bad" / "vr-modality"),
        "unknown VR (render)": unknown_vr(root / "bad" / "vr-slope", RESCALE_SLOPE),
        "RLE panic": rle_panic(root / "bad" / "rle-panic"),
        "truncated pixels": truncated_pixels(root / "bad" / "truncated"),
    }


def run(root: Path, out: Path, make=None, **kwargs):
    return run_batch(jobs_from_folder(root), QUESTIONS, out, make or Counting(),
                     progress=PlainProgress(io.StringIO()), root=root, **kwargs)


def named_files(errors: list[dict]) -> Counter:
    """How many error lines name each file (file errors by key, study errors by `files`)."""
    names: Counter = Counter()
    for e in errors:
        for name in ([e["key"]] if e["kind"] == "file" else e.get("files", [])):
            names[name] += 1
    return names


def test_each_damaged_file_is_one_error_line_naming_it_and_the_batch_finishes(tmp_path):
    root = tmp_path / "in"
    bad = damaged_folder(root)
    out = tmp_path / "out"
    make = Counting()
    summary = run(root, out, make)
    assert summary.exit_code == EXIT_SOME_FAILED
    results = read_jsonl(out / RESULTS_NAME)
    assert len(results) == 3 * len(QUESTIONS)  # every good study answered
    errors = read_jsonl(out / ERRORS_NAME)
    named = named_files(errors)
    for what, path in bad.items():
        assert named[os.path.relpath(path, root)] == 1, f"{what}: {errors}"
    assert len(errors) == len(bad)
    assert stat.S_IMODE(os.stat(out / ERRORS_NAME).st_mode) == 0o600  # paths may name the patient
    by_file = {name: e for e in errors for name in ([e["key"]] if e["kind"] == "file" else e["files"])}
    assert "unknown VR" in by_file["bad/vr-modality"]["reason"]
    assert "unknown VR" in by_file["bad/vr-slope"]["reason"]
    assert "RLE" in by_file["bad/rle-panic"]["reason"]
    assert "truncated" in by_file["bad/truncated"]["reason"]
    # the reports name no file (folder names often are patient names): only the study key
    report = (out / "report.md").read_text()
    assert "bad/" not in report and "rle-panic" not in report
    again = run(root, out, make)  # the resume completes, asks nothing twice, repeats no error line
    assert again.exit_code == EXIT_SOME_FAILED and again.answered == 0
    assert read_jsonl(out / ERRORS_NAME) == errors
    assert make.calls == 3 * len(QUESTIONS)


def test_a_truncated_file_among_good_ones_names_the_file_not_only_the_study(tmp_path):
    root = tmp_path / "in"
    study = root / "patient-folder"
    first = fresh_copy("CT_small.dcm", study / "IM1")
    import pydicom

    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(study / "IM2")
    data = (study / "IM2").read_bytes()
    (study / "IM2").write_bytes(data[:-4000])
    out = tmp_path / "out"
    run(root, out)
    errors = [e for e in read_jsonl(out / ERRORS_NAME) if e["kind"] == "study"]
    assert errors and errors[0]["files"] == ["patient-folder/IM2"], errors


CRASHING_RUN = """
import os, signal, sys, time
from pathlib import Path
from huatuo_cli.batch.runner import run_batch
from huatuo_cli.answering.inputs import jobs_from_folder
from tests.batch_helpers import describe
root, out, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
jobs = jobs_from_folder(root)
victim = next(j for j in jobs if hasattr(j, "load") and j.sources[0].parent.name == "crash")
real_load = victim.load
def crash():
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)  # what a native decoder's segfault does
    if how == "hang" and not (out / "resumed").exists():
        time.sleep(60)  # killed from outside while decoding
    return real_load()
victim.load = crash
summary = run_batch(jobs, {questions!r}, out, lambda: (describe, {model!r}), root=root)
print("exit", summary.exit_code, "answered", summary.answered)
"""


def crashing_run(root: Path, out: Path, how: str, **popen) -> subprocess.Popen:
    script = CRASHING_RUN.format(questions=QUESTIONS, model=MODEL)
    return subprocess.Popen([sys.executable, "-c", script, str(root), str(out), how], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_a_decoder_that_kills_the_process_stops_one_run_and_every_resume_completes(tmp_path):
    root = tmp_path / "in"
    sample_folder(root, truncated=False, text_file=False)
    fresh_copy("CT_small.dcm", root / "crash" / "IM1")
    out = tmp_path / "out"
    first = crashing_run(root, out, "segv")
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGSEGV
    assert (out / DECODING_NAME).is_file()  # the study being decoded when the process died
    for _attempt in range(2):  # the first resume and every later one
        proc = crashing_run(root, out, "segv")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"exit {EXIT_SOME_FAILED}" in stdout and "Traceback" not in stderr
    results = read_jsonl(out / RESULTS_NAME)
    assert len(results) == 3 * len(QUESTIONS)
    crashed = [e for e in read_jsonl(out / ERRORS_NAME) if e.get("crashed")]
    assert len(crashed) == 1 and "crashed" in crashed[0]["reason"] and "SIGSEGV" in crashed[0]["reason"]
    assert crashed[0]["files"] == ["crash/IM1"]
    assert not (out / DECODING_NAME).exists()


def test_a_kill_during_a_decode_is_not_taken_for_a_bad_file(tmp_path):
    """kill -9 while a good study decodes: the resume decodes it in a child, and it succeeds."""
    root = tmp_path / "in"
    sample_folder(root, truncated=False, text_file=False)
    fresh_copy("CT_small.dcm", root / "crash" / "IM1")
    out = tmp_path / "out"
    first = crashing_run(root, out, "hang")
    deadline = time.monotonic() + 120
    while not (out / DECODING_NAME).is_file() or "crash" not in _decoding_study(root, out):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    first.kill()
    first.communicate()
    (out / "resumed").write_text("")
    proc = crashing_run(root, out, "hang")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "exit 0" in stdout, stderr
    assert len(read_jsonl(out / RESULTS_NAME)) == 4 * len(QUESTIONS)
    assert not read_jsonl(out / ERRORS_NAME)


def _decoding_study(root: Path, out: Path) -> str:
    key = (out / DECODING_NAME).read_text()
    jobs = [j for j in jobs_from_folder(root) if isinstance(j, Job) and j.key == key]
    return jobs[0].sources[0].parent.name if jobs else ""


def test_a_second_batch_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    out = tmp_path / "out"
    started, release = threading.Event(), threading.Event()

    def slow(images, question, study_id=None):
        started.set()
        release.wait(30)
        from tests.batch_helpers import describe

        return describe(images, question)

    first = threading.Thread(target=run, args=(root, out, Counting(slow)))
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(HuatuoError, match="another huatuo batch is writing to this output folder"):
            run(root, out)
    finally:
        release.set()
        first.join()
    results = read_jsonl(out / RESULTS_NAME)
    assert len(results) == len({(r["study"], r["question"]) for r in results}) == 3 * len(QUESTIONS)
    run(root, out)  # the lock goes with the run that held it


def test_a_resume_with_another_model_is_refused_unless_allowed(tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    out = tmp_path / "out"
    jobs = jobs_from_folder(root)
    run_batch(jobs[:1], QUESTIONS, out, Counting(), progress=PlainProgress(io.StringIO()), root=root)
    other = Counting()
    other_model = {**MODEL, "model_sha256": "o" * 64}

    def make_other():
        answer, _ = other()
        return answer, other_model

    with pytest.raises(HuatuoError, match="another model"):
        run_batch(jobs, QUESTIONS, out, make_other, progress=PlainProgress(io.StringIO()), root=root)
    assert {r["model"]["model_sha256"] for r in read_jsonl(out / RESULTS_NAME)} == {MODEL["model_sha256"]}
    summary = run_batch(jobs, QUESTIONS, out, make_other, progress=PlainProgress(io.StringIO()), root=root,
                        allow_model_change=True)
    assert summary.answered == 2 * len(QUESTIONS)
    assert {r["model"]["model_sha256"] for r in read_jsonl(out / RESULTS_NAME)} == {MODEL["model_sha256"], "o" * 64}


def test_a_corrupt_copy_and_a_good_copy_of_one_image_the_readable_one_is_used(tmp_path):
    root = tmp_path / "in"
    good = fresh_copy("CT_small.dcm", root / "b-good" / "IM1")
    corrupt = good_copy(good, root / "a-corrupt" / "IM1")  # sorts first: the copy the scan meets first
    corrupt.write_bytes(corrupt.read_bytes()[:-4000])
    result = scan(root)
    assert len(result.studies) == 1 and [s.category for s in result.skipped] == ["duplicate"]
    out = tmp_path / "out"
    summary = run(root, out)
    results = read_jsonl(out / RESULTS_NAME)
    assert summary.answered == len(QUESTIONS) and len(results) == len(QUESTIONS)
    assert not [e for e in read_jsonl(out / ERRORS_NAME) if e["kind"] == "study"]
    import hashlib

    assert results[0]["inputs"][0]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()


def test_cli_batch_names_the_clash_and_the_model_change(tmp_path, tiny_bundle):
    """The CLI side: --allow-model-change exists, and the refusals are one line, no traceback."""
    from click.testing import CliRunner

    from huatuo_cli.cli import cli

    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    out = tmp_path / "out"
    base = ["batch", str(root), "--out", str(out), "--model", str(tiny_bundle), "-q", "q", "--max-tokens", "2"]
    first = CliRunner().invoke(cli, base[:1] + [str(root / "site0" / "s0")] + base[2:])
    assert first.exit_code == 0, first.output
    records = read_jsonl(out / RESULTS_NAME)  # as if another bundle had answered them
    (out / RESULTS_NAME).write_text("".join(json.dumps({**r, "model": {**r["model"], "model_sha256": "o" * 64}}) + "\n"
                                            for r in records))
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1 and "another model" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, base + ["--allow-model-change"])
    assert res.exit_code == 0, res.output


class PanicException(BaseException):
    """Stands for pyo3's PanicException (a BaseException) raised by any decoder, not only RLE's."""


def test_a_panic_escaping_any_loader_is_that_studys_error(tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    jobs = jobs_from_folder(root)
    victim = next(j for j in jobs if isinstance(j, Job))

    def panic():
        raise PanicException("index out of bounds")

    victim.load = panic
    out = tmp_path / "out"
    summary = run_batch(jobs, QUESTIONS, out, Counting(), progress=PlainProgress(io.StringIO()), root=root)
    assert summary.failed == 1 and summary.answered == 2 * len(QUESTIONS)
    assert [e["reason"] for e in read_jsonl(out / ERRORS_NAME)] == ["PanicException: index out of bounds"]
