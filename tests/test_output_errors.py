"""Issue 11 item 7: an output folder that cannot be written is a clear error, never a traceback,
and loses nothing: a full disk under --out (a real, small tmpfs), a read-only or blocked --out or
--png folder, an audit trail that cannot be written (checked before anything is answered)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import LOCK_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.batch.runner import run_batch
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from tests.batch_helpers import describe, sample_folder

QUESTIONS = ["Describe the image.", "Any abnormality?"]


@pytest.fixture
def small_disk(tmpfs):
    """A 1 MiB tmpfs: a disk that really fills up."""
    return tmpfs("size=1m")


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` with one file, then free `leave` bytes of it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 65536 if os.statvfs(disk).f_bavail > 16 else b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_full_disk_under_out_is_a_clear_error_and_a_resume_finishes(small_disk, tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    out = small_disk / "out"
    filler = fill(small_disk, leave=40000)  # room for some answers, not all (measured: 6 need ~60 kB)
    run = lambda: run_batch(jobs_from_folder(root), QUESTIONS, out, lambda: (describe, {"model_sha256": "m"}),  # noqa: E731
                            progress=PlainProgress(io.StringIO()), root=root)
    with pytest.raises(HuatuoError, match="the disk is full; the [0-9]+ answer.s. saved so far are kept") as err:
        run()
    assert "rerun the same command to resume" in str(err.value)
    saved = read_jsonl(out / RESULTS_NAME)
    assert 0 < len(saved) < 6
    leftovers = [p.name for p in out.rglob("*") if (p.name.startswith(".") or p.name.endswith(".tmp"))
                 and p.name != LOCK_NAME]  # the batch lock file stays on purpose (flock, never stale)
    assert leftovers == []  # no zero-byte temp files
    filler.unlink()
    summary = run()
    results = read_jsonl(out / RESULTS_NAME)
    assert summary.exit_code == 0 and len(results) == 6
    assert len({(r["study"], r["question"]) for r in results}) == 6
    assert results[:len(saved)] == saved  # the saved answers survived, untouched


@pytest.mark.parametrize("option", ["batch", "inspect"])
def test_unwritable_output_folder_is_one_line_error(tmp_path, option):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = str(blocker / "sub")  # a path under a regular file: unwritable even for root
    if option == "batch":
        args = ["batch", str(root), "--out", target, "-q", "Describe."]
    else:
        args = ["inspect", str(root), "--png", target]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception.__class__ is SystemExit
    assert f"cannot write to the {'--out' if option == 'batch' else '--png'} folder" in res.output


def test_audit_trail_checked_before_answering(tmp_path, monkeypatch):
    """An unwritable data directory: refused before any model is loaded or question answered."""
    from huatuo_cli import audit

    blocker = tmp_path / "data-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocker))  # the data dir would be under a file
    with pytest.raises(HuatuoError, match="cannot write the audit trail .*nothing was answered"):
        audit.ensure_writable()


def test_ask_with_unwritable_audit_trail_answers_nothing(tiny_bundle, tmp_path, monkeypatch):
    from pydicom.data import get_testdata_file

    blocker = tmp_path / "data-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocker))
    res = CliRunner().invoke(cli, ["ask", "--model", str(tiny_bundle), get_testdata_file("CT_small.dcm"),
                                   "Any fracture?"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "cannot write the audit trail" in res.output and "nothing was answered" in res.output
    assert res.stdout == ""  # no answer streamed


@pytest.mark.parametrize("question,error", [("caf\udce9?", "the question is not valid UTF-8 text"),
                                            ("<image>  ", "empty question")])
@pytest.mark.parametrize("command", ["ask", "batch"])
def test_questions_that_cannot_be_asked_are_refused_alike(tiny_bundle, tmp_path, question, error, command):
    """A non-UTF-8 question (lone surrogates from argv) and an empty one: the same refusal in ask
    and batch, before anything is answered."""
    from pydicom.data import get_testdata_file

    if command == "ask":
        args = ["ask", "--model", str(tiny_bundle), get_testdata_file("CT_small.dcm"), question]
    else:
        args = ["batch", str(sample_folder(tmp_path / "in")), "--out", str(tmp_path / "out"), "-q", question,
                "--model", str(tiny_bundle)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code in (1, 2) and "Traceback" not in res.output, res.output
    assert error in res.output
    assert not (tmp_path / "out" / RESULTS_NAME).exists()


def test_non_utf8_file_name_is_its_error_line_not_a_crash(tmp_path):
    """A file name that is not UTF-8 (Python keeps it with lone surrogates) used to crash the batch
    writing errors.jsonl; it is written as a JSON escape that reads back as the same name."""
    from huatuo_cli.batch.results import ERRORS_NAME

    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    with open(os.path.join(os.fsencode(root), b"scan\xff\xfe.txt"), "wb") as handle:
        handle.write(b"not an image")
    out = tmp_path / "out"
    summary = run_batch(jobs_from_folder(root), QUESTIONS, out, lambda: (describe, {"model_sha256": "m"}),
                        progress=PlainProgress(io.StringIO()), root=root)
    assert (summary.answered, summary.bad_files) == (6, 1)
    (bad,) = [e for e in read_jsonl(out / ERRORS_NAME) if e["kind"] == "file"]
    assert os.fsencode(bad["key"]) == b"scan\xff\xfe.txt"
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_the_answer_service_applies_the_question_rules_and_audits_every_outcome(tiny_bundle):
    """Issue 20 item 2: the one answering path (ask, batch, tui; next serve and eval) refuses what the
    rules refuse before answering, and audits an answer, a stopped one and a failed one."""
    from PIL import Image

    from huatuo_cli import audit
    from huatuo_cli.answering.service import AnswerService, Stopped
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.engine.session import Conversation

    service = AnswerService.open(tiny_bundle, command="eval", sampling=Sampling(max_tokens=6))
    try:
        picture = Image.new("RGB", (64, 64), "gray")
        with pytest.raises(HuatuoError, match="empty question"):
            service.ask(Conversation(service.model, images=[picture]), "<image> ", study_id="s")
        assert audit.read_entries() == []
        answer = service.ask(Conversation(service.model, images=[picture]), "Describe.", study_id="s")

        def stop(text: str) -> None:
            raise Stopped

        with pytest.raises(Stopped):
            service.ask(Conversation(service.model, images=[picture]), "Describe.", study_id="s", on_text=stop)
        long = Sampling(max_tokens=4096)
        with pytest.raises(HuatuoError):  # past the context window: refused before decoding
            AnswerService(service.model, "eval", long).ask(Conversation(service.model, images=[picture]),
                                                           "Describe.", study_id="s")
    finally:
        service.close()
    entries = audit.read_entries()
    assert [(e["command"], e["outcome"]) for e in entries] == [("eval", "ok"), ("eval", "stopped"), ("eval", "error")]
    assert entries[0]["answer_chars"] == len(answer.text) and entries[1]["answer_chars"] == 0
