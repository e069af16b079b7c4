"""ask and batch on the real imaging scan and a real converted bundle.

Part 1 needs only imaging: the issue's "done when" folder through the real scan, the real loop,
a kill -9 half-way and a resume, with the plain-python answer function of tests.batch_helpers
(the model is not the subject). Part 2 runs `ask` and `batch` end to end on the tiny bundle with
every socket blocked and no offline variables set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from huatuo_cli import audit
from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.batch.runner import Job, run_batch
from huatuo_cli.batch.sr import write_sr
from huatuo_cli.cli import cli
from tests.batch_helpers import Counting, assert_no_phi, sample_folder
from tests.paths import ROOT

QUESTIONS = ["Describe the image.", "Any abnormality?"]

KILLED = """
import sys
from pathlib import Path
from huatuo_cli.batch.runner import run_batch
from huatuo_cli.answering.inputs import jobs_from_folder
from tests.batch_helpers import slow_describe
root, out = Path(sys.argv[1]), Path(sys.argv[2])
run_batch(jobs_from_folder(root), {questions!r}, out, lambda: (slow_describe(0.4), {{"model_sha256": "m" * 64}}), root=root)
"""


def done_when_folder(tmp_path: Path) -> Path:
    root = sample_folder(tmp_path / "in")  # nested, no extensions, a truncated DICOM, a text file
    sources = [p for p in root.rglob("IM0000")]
    write_sr(root / "site0" / "report-sr", sources, [{"question": "q", "answer": "a"}])  # an SR among images
    return root


def test_done_when_folder_one_run(tmp_path):
    root = done_when_folder(tmp_path)
    out = tmp_path / "out"
    jobs = jobs_from_folder(root)
    summary = run_batch(jobs, QUESTIONS, out, Counting(), progress=PlainProgress(io.StringIO()), root=root)
    results = read_jsonl(out / RESULTS_NAME)
    good = [j.key for j in jobs if isinstance(j, Job)][1:]  # the truncated study sorts first ("broken/")
    assert Counter((r["study"], r["question"]) for r in results) == Counter((k, q) for k in good for q in QUESTIONS)
    errors = read_jsonl(out / ERRORS_NAME)
    assert len(errors) == 3  # the truncated DICOM, the SR, the text file: one line each
    assert summary.exit_code == 1


def test_done_when_folder_killed_and_resumed(tmp_path):
    root = done_when_folder(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(questions=QUESTIONS), str(root), str(out)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(read_jsonl(out / RESULTS_NAME)) < 2:
        time.sleep(0.05)
    # the kill must land mid-run: the child still running, some answers on disk, not all of them
    assert proc.poll() is None, f"the batch child exited by itself with code {proc.returncode}"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    before = len(read_jsonl(out / RESULTS_NAME))
    assert 2 <= before < 6, before
    make = Counting()
    run_batch(jobs_from_folder(root), QUESTIONS, out, make, progress=PlainProgress(io.StringIO()), root=root)
    results = read_jsonl(out / RESULTS_NAME)
    assert make.calls == 6 - before
    assert len(results) == 6 and len({(r["study"], r["question"]) for r in results}) == 6
    assert len(read_jsonl(out / ERRORS_NAME)) == 3


# --- part 2: needs the engine and a `tiny_bundle` fixture ---------------------------------------

def test_ask_and_batch_offline_end_to_end(tmp_path, tiny_bundle, no_network):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm", download=False)
    runner = CliRunner()
    res = runner.invoke(cli, ["ask", "--model", str(tiny_bundle), "--json", "--max-tokens", "8", ct, "Describe."])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["schema"] == "huatuo.result/2" and record["inputs"][0]["sha256"]
    # the notice goes to stderr; stdout is exactly one JSON document (which records the notice as a field)
    assert "Not for diagnostic use" in res.stderr and record["notice"].startswith("Not for diagnostic use")
    res = runner.invoke(cli, ["ask", "--model", str(tiny_bundle), "--max-tokens", "8", ct, "Describe."])
    assert res.exit_code == 0, res.output
    assert "Not for diagnostic use" in res.stderr and "Not for diagnostic use" not in res.stdout
    assert res.stdout.strip() and "\x00" not in res.stdout
    # every answer is recorded (README): one audit entry per ask, with the answer's length and the model
    entries = audit.read_entries()
    assert [(e["command"], e["outcome"], e["question"]) for e in entries] == [("ask", "ok", "Describe.")] * 2
    assert entries[0]["answer_chars"] == len(record["answer"]) and entries[1]["answer_chars"] == len(res.stdout.strip())
    assert entries[0]["model_sha256"] == record["model"]["model_sha256"] and entries[0]["study"]
    # README: the audit log names the model by its manifest hash
    assert entries[0]["model_sha256"] == hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()
    root = done_when_folder(tmp_path)
    res = runner.invoke(cli, ["batch", str(root), "--out", str(tmp_path / "out"), "--model", str(tiny_bundle),
                              "-q", "Describe.", "--max-tokens", "8", "--sr"])
    assert res.exit_code == 1, res.output  # the bad files
    assert len(read_jsonl(tmp_path / "out" / RESULTS_NAME)) == 3
    outputs = [p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*")
               if p.is_file() and p.suffix != ".dcm"]
    assert_no_phi(outputs + [res.output], root)
    assert [e["command"] for e in audit.read_entries()] == ["ask", "ask", "batch", "batch", "batch"]
    assert not no_network  # nothing even tried


def test_ask_sends_at_most_images_from_a_series_folder(tmp_path, tiny_bundle):
    """A series folder contributes representatives, capped by --images; too many files is an error."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ct = get_testdata_file("CT_small.dcm", download=False)
    series = tmp_path / "series"
    series.mkdir()
    base = pydicom.dcmread(ct)
    for i in range(5):
        base.SOPInstanceUID = generate_uid()
        base.InstanceNumber = i + 1
        base.ImagePositionPatient = [0.0, 0.0, float(i * 5)]
        base.save_as(series / f"IM{i}")
    runner = CliRunner()
    res = runner.invoke(cli, ["ask", "--model", str(tiny_bundle), "--json", "--max-tokens", "2", "--images", "2",
                              str(series), "Describe."])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["inputs"]) == 2
    res = runner.invoke(cli, ["ask", "--model", str(tiny_bundle), "--images", "1", ct, str(series / "IM0"), "Compare."])
    assert res.exit_code == 1 and "more than 1 images given" in res.output


def test_explicit_frame_of_a_multiframe_file_is_sent_once(tiny_bundle):
    from pydicom.data import get_testdata_file

    multiframe = get_testdata_file("emri_small.dcm", download=False)  # 10 frames
    runner = CliRunner()
    one = runner.invoke(cli, ["ask", "--model", str(tiny_bundle), "--json", "--max-tokens", "1", "--frame", "0",
                              multiframe, "Describe."])
    spread = runner.invoke(cli, ["ask", "--model", str(tiny_bundle), "--json", "--max-tokens", "1", multiframe,
                                 "Describe."])
    assert one.exit_code == 0 and spread.exit_code == 0, (one.output, spread.output)
    one, spread = json.loads(one.stdout), json.loads(spread.stdout)
    assert len(one["inputs"]) == len(spread["inputs"]) == 1  # one file, hashed once
    per_image = 16 + 1  # tiny tower: (56 / 14) ** 2 positions, plus the "\n" after each <image> marker
    assert spread["prompt_tokens"] - one["prompt_tokens"] == 5 * per_image  # 6 spread frames vs the one chosen


def test_batch_answers_through_the_answer_service(tmp_path, tiny_bundle):
    """The batch loop answers through `AnswerService.study_answerer()`: the service checks each question
    (one that moderation empties is an error line, never asked) and audits every answer under the
    study's hashed identifier, ok or error; the images are encoded once per study."""
    from huatuo_cli.answering.service import AnswerService
    from huatuo_cli.engine.llm import Sampling

    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    jobs = [j for j in jobs_from_folder(root) if isinstance(j, Job)]
    questions = ["Describe.", "<image>", "Any abnormality?"]
    service = AnswerService.open(tiny_bundle, command="batch", sampling=Sampling(max_tokens=4), device="cpu")
    encoded = []
    encode = service.model.encode_images
    service.model.encode_images = lambda images: encoded.append(len(images)) or encode(images)  # type: ignore[method-assign]
    try:
        run_batch(jobs, questions, tmp_path / "out", lambda: (service.study_answerer(), service.model.info),
                  progress=PlainProgress(io.StringIO()), root=root)
        refused = read_jsonl(tmp_path / "out" / ERRORS_NAME)
        assert len(encoded) == len(jobs)  # once per study, shared by its questions
        assert len(read_jsonl(tmp_path / "out" / RESULTS_NAME)) == 2 * len(jobs)
        assert [e["question"] for e in refused] == ["<image>"] * len(jobs) and "empty question" in refused[0]["reason"]
        entries = audit.read_entries()
        assert Counter((e["command"], e["outcome"], e["question"]) for e in entries) == Counter(
            {("batch", "ok", "Describe."): len(jobs), ("batch", "ok", "Any abnormality?"): len(jobs)})
        assert {e["study"] for e in entries} == {audit.study_ref(j.audit_id or j.key) for j in jobs}
        # an answer that fails in the engine is audited as an error, and is an error line of its study
        service.sampling = Sampling(max_tokens=10**6)  # more than the context window
        run_batch(jobs, ["Why?"], tmp_path / "out2", lambda: (service.study_answerer(), service.model.info),
                  progress=PlainProgress(io.StringIO()), root=root)
    finally:
        service.close()
    assert [e["outcome"] for e in audit.read_entries()[len(entries):]] == ["error"] * len(jobs)
    assert len(read_jsonl(tmp_path / "out2" / ERRORS_NAME)) == len(jobs)
    outputs = [p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert_no_phi(outputs + [audit.audit_path().read_text()], root)
