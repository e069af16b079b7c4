"""The batch loop: every pending question of every study, one failure never stopping the rest.

The loop knows nothing about models or DICOM decoding: it gets jobs (a PHI-free key plus a
function that decodes the study's images) and an answer function `answer(images, question) ->
Answer`, made once per batch by `make_answerer` and only when some question is still pending (a
finished batch rerun loads no model). That boundary is what lets the engine, a test double or a
benchmark stand behind it unchanged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from huatuo_cli import audit
from huatuo_cli.batch.progress import PlainProgress, Progress
from huatuo_cli.batch.report import save_thumbnails, study_slug, write_reports
from huatuo_cli.batch.results import BatchState
from huatuo_cli.errors import HuatuoError
from huatuo_cli.record import Answer, build_record

if TYPE_CHECKING:
    from huatuo_cli.send.sender import Outcome

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130
SR_DIR = "sr"

AnswerFn = Callable[[list, str], Answer]


@dataclass
class StudyInputs:
    """A study's decoded images, ready for the model."""

    images: list                       # PIL RGB images, in the order the model sees them
    inputs: list[str]                  # content hashes of the input files
    window: str | None = None          # the window actually applied (preset name or "C/W")


@dataclass
class Job:
    """One unit of a batch: a study (or a series with --per series)."""

    key: str                           # PHI-free and stable across runs: the resume key
    load: Callable[[], StudyInputs]    # decodes the images; may raise for a bad study
    series: str | None = None
    sources: list[Path] = field(default_factory=list)  # DICOM files behind the images (SR references)
    audit_id: str | None = None        # identifier the audit log hashes (e.g. StudyInstanceUID)


@dataclass
class BadFile:
    """A file the scan could not use. `key` is its path relative to the batch folder."""

    key: str
    reason: str


@dataclass
class Summary:
    answered: int = 0
    skipped: int = 0          # (study, question) pairs already done by an earlier run
    failed: int = 0           # studies that failed in this run
    bad_files: int = 0
    srs: int = 0
    sent: int = 0             # SRs delivered to the PACS in this run (--send)
    unsent: int = 0           # SRs whose delivery failed (kept on disk; a rerun tries again)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed or self.bad_files or self.unsent else EXIT_OK


def _reason(exc: BaseException, root: Path | None) -> str:
    """A failure reason for errors.jsonl. HuatuoError messages are PHI-free by contract; for other
    exceptions (decoder bugs on odd files) only the type and a message with paths removed."""
    text = str(exc)
    if not isinstance(exc, HuatuoError):
        if root is not None:
            text = text.replace(os.fspath(root), "<batch>")
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())[:500]


def run_batch(
    jobs: Sequence[Job | BadFile],
    questions: Sequence[str],
    out: Path,
    make_answerer: Callable[[], tuple[AnswerFn, Any]],
    *,
    write_srs: bool = False,
    progress: Progress | None = None,
    root: Path | None = None,
    command: str = "batch",
    send_sr: Callable[[Path], Outcome] | None = None,
) -> Summary:
    """Answer every pending (study, question) pair; durable after each answer; resumable.

    `make_answerer()` returns (answer function, model info) and is called at most once.
    KeyboardInterrupt stops the loop cleanly: everything answered so far is on disk and the reports
    are written; the summary says interrupted. `send_sr(path)` (batch --send) delivers each study's
    SR once it is on disk, also one written by an earlier run and not yet delivered.
    """
    if not questions:
        raise HuatuoError("no questions to ask")
    state = BatchState.open(out)
    progress = progress or PlainProgress()
    summary = Summary()
    answerer: tuple[AnswerFn, Any] | None = None
    progress.start(len(jobs))
    try:
        for job in jobs:
            if isinstance(job, BadFile):
                state.add_error(kind="file", key=job.key, reason=job.reason)
                summary.bad_files += 1
                progress.step("file", "skipped: not usable")
                continue
            pending = state.pending(job.key, list(questions))
            summary.skipped += len(questions) - len(pending)
            status = "done earlier"
            if pending:
                try:
                    inputs = job.load()
                    if not inputs.images:
                        raise HuatuoError("no usable images in this study")
                    save_thumbnails(state.out, job.key, inputs.images)
                except Exception as exc:  # one bad study never stops the batch
                    state.add_error(kind="study", key=job.key, reason=_reason(exc, root))
                    summary.failed += 1
                    progress.step(job.key, "failed: see errors.jsonl")
                    continue
                if answerer is None:
                    answerer = make_answerer()
                answer_fn, model = answerer
                failed = 0
                for question in pending:
                    t0 = time.perf_counter()
                    try:
                        answer = answer_fn(inputs.images, question)
                    except Exception as exc:
                        failed += 1
                        state.add_error(kind="study", key=job.key, question=question, reason=_reason(exc, root))
                        _audit(command, model, job, question, 0, "error")
                        continue
                    record = build_record(study=job.key, series=job.series, question=question, answer=answer,
                                          model=model, inputs=inputs.inputs, window=inputs.window,
                                          total_s=time.perf_counter() - t0)
                    state.add_result(record)
                    summary.answered += 1
                    _audit(command, model, job, question, len(answer.text), "ok")
                summary.failed += bool(failed)
                status = f"{len(pending) - failed} answered" + (f", {failed} failed" if failed else "")
            if write_srs and job.sources and not state.pending(job.key, list(questions)):
                if _write_sr(state, job, root, summary):
                    status += ", SR written"
                if send_sr is not None:
                    status += _send_sr(state, job, send_sr, summary)
            progress.step(job.key, status)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        progress.close()
        write_reports(state.out, state.results, state.open_errors())
    return summary


def _write_sr(state: BatchState, job: Job, root: Path | None, summary: Summary) -> bool:
    from huatuo_cli.batch.sr import write_sr
    from huatuo_cli.privacy import private_dir

    path = sr_path(private_dir(state.out / SR_DIR), job.key)
    if path.exists():
        return False
    answers = state.answers_for(job.key)
    try:
        write_sr(path, job.sources, answers, model_id=(answers[0]["model"].get("model_id") or "") if answers else "")
    except Exception as exc:
        state.add_error(kind="study", key=job.key, reason="SR not written: " + _reason(exc, root))
        summary.failed += 1
        return False
    summary.srs += 1
    return True


def sr_path(sr_dir: Path, key: str) -> Path:
    """Where a study's SR lives: named by a hash of its PHI-free key."""
    return sr_dir / f"{study_slug(key)}.dcm"


def _send_sr(state: BatchState, job: Job, send_sr: Callable[[Path], Outcome], summary: Summary) -> str:
    """Deliver the study's SR (the sender's ledger skips one already delivered). A failure is an
    error entry and a non-zero exit; the SR stays on disk for the next run or `huatuo send`."""
    path = sr_path(state.out / SR_DIR, job.key)
    if not path.is_file():
        return ""
    outcome = send_sr(path)
    if not outcome.ok:
        state.add_error(kind="send", key=job.key, reason="SR not sent: " + outcome.reason)
        summary.unsent += 1
        return ", SR not sent"
    if outcome.state in ("sent", "resent"):
        summary.sent += 1
        return ", SR sent"
    return ""


def _audit(command: str, model: Any, job: Job, question: str, chars: int, outcome: str) -> None:
    from huatuo_cli.record import model_dict

    audit.record(command, model_id=model_dict(model).get("model_id"), study_id=job.audit_id or job.key,
                 question=question, answer_chars=chars, outcome=outcome)
