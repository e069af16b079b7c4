"""The batch loop: every pending question of every study, one failure never stopping the rest.

The loop knows nothing about models or DICOM decoding: it gets jobs (a PHI-free key plus a
function that decodes the study's images) and an answer function `answer(images, question) ->
Answer`, made once per batch by `make_answerer` and only when some question is still pending (a
finished batch rerun loads no model). That boundary is what lets the engine, a test double or a
benchmark stand behind it unchanged.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from huatuo_cli import audit
from huatuo_cli.batch.progress import PlainProgress, Progress
from huatuo_cli.batch.report import save_thumbnails, study_slug, write_reports
from huatuo_cli.batch.results import BatchState, locked
from huatuo_cli.errors import HuatuoError, is_data_failure
from huatuo_cli.record import Answer, build_record

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


class FileFailure(HuatuoError):
    """A study failed because of one of its files: `path` names it in errors.jsonl (owner-only;
    the reports show only the study key, since folder names often name the patient)."""

    def __init__(self, cause: HuatuoError, path: Path) -> None:
        super().__init__(cause.args[0] if cause.args else str(cause), hint=cause.hint)
        self.path = path
        self.category: str | None = getattr(cause, "category", None)


class DecoderCrash(HuatuoError):
    """Decoding a study killed the process that tried it (a native decoder's segfault or abort)."""


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


def _relative(path: Path, root: Path | None) -> str:
    return os.path.relpath(path, root) if root is not None else os.fspath(path)


def _failed_files(exc: BaseException, job: Job, root: Path | None) -> list[str]:
    """The files behind a study's failure: the one that failed, or for a crash every source."""
    if isinstance(exc, FileFailure):
        return [_relative(exc.path, root)]
    if isinstance(exc, DecoderCrash):
        return [_relative(path, root) for path in job.sources]
    return []


def _child_load(load: Callable[[], StudyInputs], send: Any, root: Path | None) -> None:
    """In the forked child: decode and send back the images, or the failure as plain data."""
    try:
        send.send(("ok", load()))
    except BaseException as exc:  # everything goes back to the parent, which decides
        path = exc.path if isinstance(exc, FileFailure) else None
        send.send(("error", _reason(exc, root), path))


def load_isolated(job: Job, root: Path | None = None) -> StudyInputs:
    """Decode a study in a forked child process, for a study whose decode once killed the batch.

    A native decoder that segfaults or aborts on some file takes the whole process with it; in a
    child it takes only the child, and the study becomes an error line. Only studies that crashed
    a run before come here (the fork costs little, but the images travel back through a pipe).
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_load, args=(job.load, send, root), daemon=True)
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:  # the child died without a word
        outcome = None
    finally:
        child.join()
        receive.close()
    if outcome is None:
        code = child.exitcode or 0
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise DecoderCrash(f"the image decoder crashed on this study ({what}); a run stopped here before")
    if outcome[0] == "ok":
        inputs: StudyInputs = outcome[1]
        return inputs
    _, reason, path = outcome
    raise FileFailure(HuatuoError(reason), path) if path is not None else HuatuoError(reason)


def _check_model(state: BatchState, model: Any, allow_model_change: bool) -> None:
    """Refuse to add answers of another model to a results.jsonl: one batch, one model, unless told."""
    from huatuo_cli.record import model_dict

    current = model_dict(model).get("model_id")
    earlier = sorted({str(r.get("model", {}).get("model_id")) for r in state.results} - {str(current)})
    if earlier and not allow_model_change:
        raise HuatuoError(
            f"this output folder holds answers of another model (model id {', '.join(e[:12] for e in earlier)}; "
            f"this one is {str(current)[:12]})",
            hint="give a new --out folder, or pass --allow-model-change to add this model's answers beside them")


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
    allow_model_change: bool = False,
) -> Summary:
    """Answer every pending (study, question) pair; durable after each answer; resumable.

    `make_answerer()` returns (answer function, model info) and is called at most once; a model
    other than the one whose answers OUT already holds is refused unless `allow_model_change`.
    KeyboardInterrupt stops the loop cleanly: everything answered so far is on disk and the reports
    are written; the summary says interrupted. OUT is locked for the whole run.
    """
    if not questions:
        raise HuatuoError("no questions to ask")
    from huatuo_cli.privacy import private_dir

    folder = private_dir(out)
    with locked(folder):  # before reading: the torn-line repair must not cut another run's line
        return _run_locked(BatchState.open(folder), jobs, questions, make_answerer, write_srs=write_srs, progress=progress,
                           root=root, command=command, allow_model_change=allow_model_change)


def _run_locked(
    state: BatchState,
    jobs: Sequence[Job | BadFile],
    questions: Sequence[str],
    make_answerer: Callable[[], tuple[AnswerFn, Any]],
    *,
    write_srs: bool,
    progress: Progress | None,
    root: Path | None,
    command: str,
    allow_model_change: bool,
) -> Summary:
    crashed = state.crashed_studies()
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
                    if job.key in crashed:
                        inputs = load_isolated(job, root)
                    else:
                        state.decoding(job.key)
                        inputs = job.load()
                    if not inputs.images:
                        raise HuatuoError("no usable images in this study")
                    save_thumbnails(state.out, job.key, inputs.images)
                except BaseException as exc:  # one bad study never stops the batch (a decoder panic included)
                    if not is_data_failure(exc):
                        raise
                    state.add_error(kind="study", key=job.key, reason=_reason(exc, root),
                                    files=_failed_files(exc, job, root), crashed=isinstance(exc, DecoderCrash))
                    summary.failed += 1
                    progress.step(job.key, "failed: see errors.jsonl")
                    continue
                finally:
                    state.decoding(None)
                if answerer is None:
                    answerer = make_answerer()
                    _check_model(state, answerer[1], allow_model_change)
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

    path = private_dir(state.out / SR_DIR) / f"{study_slug(job.key)}.dcm"
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


def _audit(command: str, model: Any, job: Job, question: str, chars: int, outcome: str) -> None:
    from huatuo_cli.record import model_dict

    audit.record(command, model_id=model_dict(model).get("model_id"), study_id=job.audit_id or job.key,
                 question=question, answer_chars=chars, outcome=outcome)
