"""The batch loop: every pending question of every study, one failure never stopping the rest.

The loop knows nothing about models or DICOM decoding: it gets jobs (a PHI-free key plus a
function that decodes the study's images) and an answer function `answer(images, question, study_id) ->
Answer`, made once per batch by `make_answerer` and only when some question is still pending (a
finished batch rerun loads no model). That boundary is what lets the engine, a test double or a
benchmark stand behind it unchanged.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huatuo_cli.answering.jobs import AnswerFn as AnswerFn
from huatuo_cli.answering.jobs import BadFile as BadFile
from huatuo_cli.answering.jobs import DecoderCrash as DecoderCrash
from huatuo_cli.answering.jobs import FileFailure as FileFailure
from huatuo_cli.answering.jobs import Job as Job
from huatuo_cli.answering.jobs import ModelRef
from huatuo_cli.answering.jobs import StudyInputs as StudyInputs
from huatuo_cli.answering.record import build_record
from huatuo_cli.atomic import OutputError
from huatuo_cli.batch.progress import PlainProgress, Progress
from huatuo_cli.batch.report import save_thumbnails, study_slug, write_reports
from huatuo_cli.batch.results import BatchState, locked
from huatuo_cli.batch.sr import SR_DIR  # noqa: F401  (re-exported: OUT/sr/ holds the SRs)
from huatuo_cli.errors import HuatuoError, is_data_failure
from huatuo_cli.privacy import private_dir, scrub

if TYPE_CHECKING:
    from huatuo_cli.batch.ray_run import RaySettings
    from huatuo_cli.send.sender import Outcome

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130


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
    """A failure reason for errors.jsonl (and so the reports). HuatuoError messages are PHI-free by
    contract; for other exceptions (decoder bugs on odd files) the type and the message with every
    path, quoted value and UID removed (`privacy.scrub`): a damaged element's complaint may quote
    a patient name or UID."""
    text = str(exc)
    if not isinstance(exc, HuatuoError):
        text = f"{type(exc).__name__}: {scrub(text)}"
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


def _check_model(state: BatchState, model: ModelRef, allow_model_change: bool) -> None:
    """Refuse to add answers of another model to a results.jsonl: one batch, one model, unless told."""
    from huatuo_cli.answering.record import model_dict

    current = model_dict(model).get("model_sha256")
    earlier = sorted({str(r.get("model", {}).get("model_sha256")) for r in state.results} - {str(current)})
    if earlier and not allow_model_change:
        raise HuatuoError(
            f"this output folder holds answers of another model (model {', '.join(e[:12] for e in earlier)}; "
            f"this one is {str(current)[:12]})",
            hint="give a new --out folder, or pass --allow-model-change to add this model's answers beside them")


def run_batch(
    jobs: Sequence[Job | BadFile],
    questions: Sequence[str],
    out: Path,
    make_answerer: Callable[[], tuple[AnswerFn, ModelRef]],
    *,
    write_srs: bool = False,
    progress: Progress | None = None,
    root: Path | None = None,
    thumbnails: str = "safe",
    send_sr: Callable[[Path], Outcome] | None = None,
    allow_model_change: bool = False,
    ray: RaySettings | None = None,
) -> Summary:
    """Answer every pending (study, question) pair; durable after each answer; resumable.

    `make_answerer()` returns (answer function, model info) and is called at most once; a model
    other than the one whose answers OUT already holds is refused unless `allow_model_change`.
    `thumbnails` is which thumbnails the shareable reports embed (batch.report.THUMBNAIL_CHOICES).
    KeyboardInterrupt stops the loop cleanly: everything answered so far is on disk and the reports
    are written; the summary says interrupted. OUT is locked for the whole run. `send_sr(path)`
    (batch --send) delivers each study's SR once it is on disk, also one written by an earlier run
    and not yet delivered. With `ray` the jobs are answered by actors on a Ray cluster
    (batch.ray_run; `make_answerer` is then not called): same OUT, same resume rules.
    """
    if not questions:
        raise HuatuoError("no questions to ask")
    try:
        folder = private_dir(out)
    except OSError as exc:
        raise batch_output_error(exc, Path(out), saved=0) from exc
    with locked(folder):  # before reading: the torn-line repair must not cut another run's line
        try:
            state = BatchState.open(folder)
        except OSError as exc:
            raise batch_output_error(exc, Path(out), saved=0) from exc
        return _run_locked(state, jobs, questions, make_answerer, write_srs=write_srs, progress=progress,
                           root=root, thumbnails=thumbnails, send_sr=send_sr,
                           allow_model_change=allow_model_change, ray=ray)


def _run_locked(
    state: BatchState,
    jobs: Sequence[Job | BadFile],
    questions: Sequence[str],
    make_answerer: Callable[[], tuple[AnswerFn, ModelRef]],
    *,
    write_srs: bool,
    progress: Progress | None,
    root: Path | None,
    thumbnails: str,
    send_sr: Callable[[Path], Outcome] | None,
    allow_model_change: bool,
    ray: RaySettings | None = None,
) -> Summary:
    crashed = state.crashed_studies()
    progress = progress or PlainProgress()
    summary = Summary()
    answerer: tuple[AnswerFn, ModelRef] | None = None
    failure: OSError | None = None  # the output folder could not be written (disk full, read-only)
    progress.start(len(jobs))
    by_study = _jobs_by_study(jobs)  # one SR per study, written after its last job
    try:
        if ray is not None:
            from huatuo_cli.batch.ray_run import run_on_ray

            run_on_ray(state, jobs, list(questions), ray, summary=summary, progress=progress, root=root,
                       write_srs=write_srs, crashed=crashed,
                       finish_study=lambda group: _finish_study(state, group, list(questions), root, send_sr, summary),
                       check_model=lambda model: _check_model(state, model, allow_model_change))
        for job in jobs if ray is None else ():
            if isinstance(job, BadFile):
                state.add_error(kind="file", key=job.key, reason=job.reason)
                summary.bad_files += 1
                progress.step("file", "skipped: not usable")
                continue
            pending = state.pending(job.key, list(questions))
            summary.skipped += len(questions) - len(pending)
            status = "done earlier"
            if pending:
                inputs = _load_study(state, job, job.key in crashed, root, summary)
                if inputs is None:
                    progress.step(job.key, "failed: see errors.jsonl")
                    continue
                # outside the study's failure handling: a full --out is the output folder's failure
                save_thumbnails(state.out, job.key, inputs.images, metas=inputs.metas, overlays=inputs.overlays)
                if answerer is None:
                    answerer = make_answerer()
                    _check_model(state, answerer[1], allow_model_change)
                status = _answer_pending(state, job, inputs, pending, answerer, root, summary)
            if write_srs and by_study[job.study_key][-1] is job:
                status += _finish_study(state, by_study[job.study_key], list(questions), root, send_sr, summary)
            progress.step(job.key, status)
    except KeyboardInterrupt:
        summary.interrupted = True
    except OSError as exc:
        failure = exc
    except OutputError as exc:  # the one file writer names a full disk itself; the batch says what survived
        failure = exc.os_error
    finally:
        progress.close()
        try:
            write_reports(state.out, state.results, state.open_errors(), thumbnails=thumbnails)
        except OSError as exc:
            failure = failure or exc
        except OutputError as exc:
            failure = failure or exc.os_error
    if failure is not None:
        raise batch_output_error(failure, state.out, saved=len(state.results)) from failure
    return summary


def _jobs_by_study(jobs: Sequence[Job | BadFile]) -> dict[str, list[Job]]:
    by_study: dict[str, list[Job]] = {}
    for job in jobs:
        if isinstance(job, Job):
            by_study.setdefault(job.study_key, []).append(job)
    return by_study


def _load_study(state: BatchState, job: Job, crashed_before: bool, root: Path | None,
                summary: Summary) -> StudyInputs | None:
    """The study's images, or None when the study failed (an error line written, counted as failed).

    A study whose decode killed an earlier run is decoded in a child process (`load_isolated`);
    any other is marked as being decoded, so that a crash now is known on the next run."""
    try:
        if crashed_before:
            inputs = load_isolated(job, root)
        else:
            state.decoding(job.key)
            inputs = job.load()
        if not inputs.images:
            raise HuatuoError("no usable images in this study")
    except BaseException as exc:  # one bad study never stops the batch (a decoder panic included)
        if not is_data_failure(exc):
            raise
        state.add_error(kind="study", key=job.key, reason=_reason(exc, root),
                        files=_failed_files(exc, job, root), crashed=isinstance(exc, DecoderCrash))
        summary.failed += 1
        return None
    finally:
        state.decoding(None)
    return inputs


def _answer_pending(state: BatchState, job: Job, inputs: StudyInputs, pending: list[str],
                    answerer: tuple[AnswerFn, ModelRef], root: Path | None, summary: Summary) -> str:
    """Answer the job's pending questions, each durable as soon as it is answered; a failed question
    is an error line and never stops the others. Returns the progress status."""
    answer_fn, model = answerer
    failed = 0
    for question in pending:
        t0 = time.perf_counter()
        try:
            answer = answer_fn(inputs.images, question, job.audit_id or job.key)
        except Exception as exc:
            failed += 1
            state.add_error(kind="study", key=job.key, question=question, reason=_reason(exc, root))
            continue
        record = build_record(study=job.key, series=job.series, question=question, answer=answer,
                              model=model, inputs=inputs.inputs, window=inputs.window,
                              total_s=time.perf_counter() - t0)
        state.add_result(record)
        summary.answered += 1
    summary.failed += bool(failed)
    return f"{len(pending) - failed} answered" + (f", {failed} failed" if failed else "")


def _finish_study(state: BatchState, jobs: list[Job], questions: list[str], root: Path | None,
                  send_sr: Callable[[Path], Outcome] | None, summary: Summary) -> str:
    """After the study's last job: its SR written when due, and delivered with --send. Returns what
    to add to the progress status."""
    status = ""
    if _write_sr(state, jobs, questions, root, summary) is not None:
        status += ", SR written"
    if send_sr is not None:
        status += _send_sr(state, jobs[-1], send_sr, summary)
    return status


def batch_output_error(exc: OSError, out: Path, *, saved: int) -> HuatuoError:
    """The output folder failed under the batch (disk full, read-only, removed): one clear message.

    Every answer appended before the failure is complete and fsynced (a torn last line is dropped
    on resume), so the message says how many are kept and that a rerun resumes.
    """
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk is full" if full else (exc.strerror or exc.__class__.__name__)
    return HuatuoError(
        f"cannot write to the output folder {out}: {what}; the {saved} answer(s) saved so far are kept",
        hint=("free space there" if full else "fix the output folder") + " and rerun the same command to resume",
    )


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


def _send_sr(state: BatchState, job: Job, send_sr: Callable[[Path], Outcome], summary: Summary) -> str:
    """Deliver the study's SR (the sender's ledger skips one already delivered). A failure is an
    error entry and a non-zero exit; the SR stays on disk for the next run or `huatuo send`."""
    from huatuo_cli.batch.sr import sr_path

    path = sr_path(state.out, study_slug(job.study_key))
    if not path.is_file():
        return ""
    outcome = send_sr(path)
    if not outcome.ok:
        state.add_error(kind="send", key=job.study_key, reason="SR not sent: " + outcome.reason)
        summary.unsent += 1
        return ", SR not sent"
    state.delivered.add(job.study_key)  # sent now or before: an old "SR not sent" line no longer stands
    if outcome.state in ("sent", "resent"):
        summary.sent += 1
        return ", SR sent"
    return ""

