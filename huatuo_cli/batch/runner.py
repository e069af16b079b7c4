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
from typing import Any, Callable, Sequence

from huatuo_cli import audit
from huatuo_cli.batch.progress import PlainProgress, Progress
from huatuo_cli.batch.report import save_thumbnails, study_slug, write_reports
from huatuo_cli.batch.results import BatchState
from huatuo_cli.batch.sr import SR_DIR  # noqa: F401  (re-exported: OUT/sr/ holds the SRs)
from huatuo_cli.errors import HuatuoError
from huatuo_cli.record import Answer, build_record

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130

AnswerFn = Callable[[list, str], Answer]


@dataclass
class StudyInputs:
    """A study's decoded images, ready for the model."""

    images: list                       # PIL RGB images, in the order the model sees them
    inputs: list[str]                  # content hashes of the input files
    window: str | None = None          # the window actually applied (preset name or "C/W")
    metas: list = field(default_factory=list)     # imaging.ImageMeta per image (PHI-free facts, caveats)
    overlays: list = field(default_factory=list)  # overlay mask per image or None (thumbnails draw them)


@dataclass
class Job:
    """One unit of a batch: a study (or a series with --per series)."""

    key: str                           # PHI-free and stable across runs: the resume key
    load: Callable[[], StudyInputs]    # decodes the images; may raise for a bad study
    series: str | None = None
    sources: list[Path] = field(default_factory=list)  # DICOM files behind the images (SR references)
    audit_id: str | None = None        # identifier the audit log hashes (e.g. StudyInstanceUID)
    #: 0-based frames of each source the model sees (the SR references them by frame number)
    frames: dict[Path, tuple[int, ...]] = field(default_factory=dict)
    study: str | None = None           # the study key when `key` is a series (--per series): one SR per study

    @property
    def study_key(self) -> str:
        return self.study or self.key


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
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed or self.bad_files else EXIT_OK


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
    thumbnails: str = "safe",
) -> Summary:
    """Answer every pending (study, question) pair; durable after each answer; resumable.

    `make_answerer()` returns (answer function, model info) and is called at most once.
    `thumbnails` is which thumbnails the shareable reports embed (batch.report.THUMBNAIL_CHOICES).
    KeyboardInterrupt stops the loop cleanly: everything answered so far is on disk and the reports
    are written; the summary says interrupted.
    """
    if not questions:
        raise HuatuoError("no questions to ask")
    state = BatchState.open(out)
    progress = progress or PlainProgress()
    summary = Summary()
    answerer: tuple[AnswerFn, Any] | None = None
    progress.start(len(jobs))
    by_study: dict[str, list[Job]] = {}  # one SR per study, written after its last job
    for j in jobs:
        if isinstance(j, Job):
            by_study.setdefault(j.study_key, []).append(j)
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
                    save_thumbnails(state.out, job.key, inputs.images, metas=inputs.metas, overlays=inputs.overlays)
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
            if write_srs and by_study[job.study_key][-1] is job:
                if _write_sr(state, by_study[job.study_key], list(questions), root, summary) is not None:
                    status += ", SR written"
            progress.step(job.key, status)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        progress.close()
        write_reports(state.out, state.results, state.open_errors(), thumbnails=thumbnails)
    return summary


def _write_sr(state: BatchState, jobs: list[Job], questions: list[str], root: Path | None,
              summary: Summary) -> Path | None:
    """Write (or rewrite) the study's one SR once every job of the study has all its answers;
    return its path when this call wrote it (None: not due, unchanged, or failed).

    The SR holds every answer of the study, those of earlier runs included; it is rewritten
    (atomically) only when what it would say changed (a question added), so a plain rerun leaves
    it alone.
    """
    from huatuo_cli.batch.sr import AnsweredImages, SeenImage, is_current, sr_path, write_study_sr

    if any(state.pending(j.key, questions) for j in jobs) or not any(j.sources for j in jobs):
        return None
    parts = [AnsweredImages(answers=state.answers_for(j.key),
                            images=[SeenImage(p, j.frames.get(p, ())) for p in j.sources])
             for j in jobs if j.sources]
    path = sr_path(state.out, study_slug(jobs[0].study_key))
    try:
        if is_current(path, parts):
            return None
        write_study_sr(path, parts)
    except Exception as exc:
        state.add_error(kind="study", key=jobs[0].study_key, reason="SR not written: " + _reason(exc, root))
        summary.failed += 1
        return None
    summary.srs += 1
    return path


def _audit(command: str, model: Any, job: Job, question: str, chars: int, outcome: str) -> None:
    from huatuo_cli.record import model_dict

    audit.record(command, model_id=model_dict(model).get("model_id"), study_id=job.audit_id or job.key,
                 question=question, answer_chars=chars, outcome=outcome)
