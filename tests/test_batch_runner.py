"""The batch loop on real DICOM test files with a plain-python answer function.

The model is not the subject here (`describe` answers from the pixels); these tests check the
loop: one result per study and question, bad files and failing studies isolated, exit codes,
durability across Ctrl-C and kill -9, resume without loss or duplicates, no PHI in any output.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.batch.runner import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, SR_DIR, Job, run_batch
from huatuo_cli.errors import HuatuoError
from tests.batch_helpers import MODEL, QUESTIONS, Counting, assert_no_phi, describe, sample_folder
from tests.paths import ROOT


def expected(root: Path) -> dict[tuple[str, str], str]:
    return {(j.key, q): describe(j.load().images, q).text
            for j in jobs_from_folder(root) if isinstance(j, Job) and j.sources[0].parent.name != "broken"
            for q in QUESTIONS}


def test_all_ok_exit_0_and_model_loaded_once(tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    make = Counting()
    summary = run_batch(jobs_from_folder(root), QUESTIONS, tmp_path / "out", make, progress=PlainProgress(io.StringIO()))
    assert summary.exit_code == EXIT_OK and summary.answered == 6 and make.loads == 1
    results = read_jsonl(tmp_path / "out" / RESULTS_NAME)
    assert {(r["study"], r["question"]): r["answer"] for r in results} == expected(root)
    assert all(r["inputs"][0]["sha256"] and r["model"]["model_sha256"] == MODEL["model_sha256"] for r in results)
    # a rerun of a finished batch answers nothing and does not even load the model
    again = Counting()
    summary = run_batch(jobs_from_folder(root), QUESTIONS, tmp_path / "out", again, progress=PlainProgress(io.StringIO()))
    assert (summary.answered, summary.skipped, again.loads) == (0, 6, 0)


def test_bad_files_and_failing_studies_do_not_stop_the_batch(tmp_path):
    root = sample_folder(tmp_path / "in")

    def picky(images, question, study_id=None):
        if images[0].size == (64, 64) and question == QUESTIONS[1]:
            raise HuatuoError("the conversation does not fit in the model's context window")
        return describe(images, question)

    stream = io.StringIO()
    summary = run_batch(jobs_from_folder(root), QUESTIONS, tmp_path / "out", Counting(picky), progress=PlainProgress(stream),
                        root=root)
    assert summary.exit_code == EXIT_SOME_FAILED
    assert (summary.answered, summary.bad_files, summary.failed) == (5, 1, 2)
    errors = read_jsonl(tmp_path / "out" / ERRORS_NAME)
    assert sorted(e["kind"] for e in errors) == ["file", "study", "study"]
    assert {e["key"] for e in errors if e["kind"] == "file"} == {"notes.txt"}
    decode_error = next(e for e in errors if e["kind"] == "study" and e["question"] is None)
    assert decode_error["reason"].startswith("truncated file")  # imaging's own PHI-free reason
    assert len(stream.getvalue().splitlines()) == 5  # one line per job
    outputs = [p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert_no_phi(outputs + [stream.getvalue()], root)  # the audit trail: test_ask_batch_integration
    statuses = {p: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").rglob("*")}
    assert set(statuses.values()) <= {"0o600", "0o700"}, statuses


def test_ctrl_c_keeps_results_and_rerun_finishes(tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    calls = []

    def interrupted(images, question, study_id=None):
        calls.append(question)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return describe(images, question)

    summary = run_batch(jobs_from_folder(root), QUESTIONS, tmp_path / "out", Counting(interrupted),
                        progress=PlainProgress(io.StringIO()))
    assert summary.interrupted and summary.exit_code == EXIT_INTERRUPTED
    assert len(read_jsonl(tmp_path / "out" / RESULTS_NAME)) == 2
    assert (tmp_path / "out" / "report.html").is_file()
    make = Counting()
    summary = run_batch(jobs_from_folder(root), QUESTIONS, tmp_path / "out", make, progress=PlainProgress(io.StringIO()))
    assert summary.exit_code == EXIT_OK and make.calls == 4
    results = read_jsonl(tmp_path / "out" / RESULTS_NAME)
    assert {(r["study"], r["question"]): r["answer"] for r in results} == expected(root)


KILLED_RUN = """
import sys
from pathlib import Path
from huatuo_cli.batch.runner import run_batch
from huatuo_cli.answering.inputs import jobs_from_folder
from tests.batch_helpers import slow_describe
root, out = Path(sys.argv[1]), Path(sys.argv[2])
run_batch(jobs_from_folder(root), {questions!r}, out, lambda: (slow_describe(0.4), {{"model_sha256": "m" * 64}}), root=root)
"""


@pytest.mark.slow
def test_kill_9_half_way_then_resume_loses_nothing_and_repeats_nothing(tmp_path):
    root = sample_folder(tmp_path / "in")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(questions=QUESTIONS), str(root), str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(read_jsonl(out / RESULTS_NAME)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    before = len(read_jsonl(out / RESULTS_NAME))
    assert 2 <= before < 6
    with open(out / RESULTS_NAME, "ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(b'{"schema": "huatuo.result/1", "study": "study-')
    make = Counting()
    summary = run_batch(jobs_from_folder(root), QUESTIONS, out, make, progress=PlainProgress(io.StringIO()), root=root)
    assert summary.exit_code == EXIT_SOME_FAILED
    assert make.calls == 6 - before and summary.answered == 6 - before
    results = read_jsonl(out / RESULTS_NAME)
    assert Counter((r["study"], r["question"]) for r in results) == Counter(list(expected(root)))
    assert {(r["study"], r["question"]): r["answer"] for r in results} == expected(root)
    errors = read_jsonl(out / ERRORS_NAME)
    assert Counter(e["kind"] for e in errors) == {"file": 1, "study": 1}  # each bad item once, across both runs


def test_sr_per_study_references_its_sources(tmp_path):
    root = sample_folder(tmp_path / "in", text_file=False)
    out = tmp_path / "out"
    summary = run_batch(jobs_from_folder(root), QUESTIONS, out, Counting(), write_srs=True,
                        progress=PlainProgress(io.StringIO()), root=root)
    assert summary.srs == 3 and summary.exit_code == EXIT_SOME_FAILED  # the truncated study has no SR
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in root.rglob("IM000*")}
    refs = set()
    for path in (out / SR_DIR).iterdir():
        sr = pydicom.dcmread(path)
        assert sr.VerificationFlag == "UNVERIFIED"
        refs |= {str(item.ReferencedSOPInstanceUID) for item in sr.CurrentRequestedProcedureEvidenceSequence[0]
                 .ReferencedSeriesSequence[0].ReferencedSOPSequence}
    assert refs == sources
    # a rerun writes no second SR
    assert run_batch(jobs_from_folder(root), QUESTIONS, out, Counting(), write_srs=True,
                     progress=PlainProgress(io.StringIO())).srs == 0
