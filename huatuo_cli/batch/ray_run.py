"""`huatuo batch --ray`: the same study jobs answered by actors on an existing Ray cluster.

The driver (this process) scans and plans as a local batch does and alone writes OUT: results,
errors, thumbnails, SRs and reports, with the local loop's fsync and resume rules (BatchState), so
a rerun (with or without --ray) resumes it. Each actor (`StudyActor`) loads and verifies one bundle
once (`AnswerService.open`: every file's sha256, on its own node) and answers through the same
answering service as a local run (command "batch", audited on its node with the node id).

Per job the driver sends one `load` call (the actor decodes the study from a path every node sees,
or the driver decodes and ships the images with `ship=True`) and one `answer` call per pending
question, so answers stream back one by one and are written as they arrive. An answer is written
only while its (study, question) is still pending: a job retried after its actor was lost resends
only what is missing, and nothing is written twice. A lost actor (its node gone, or a native
decoder crash killing its process) puts its in-flight jobs back in the queue for the actors left;
a replacement actor is started and joins when Ray can place it. A retried study is decoded in a
child process on the actor (`load_isolated`), so a decoder crash costs one actor at most.

`ray` is imported here only, and only inside functions: `huatuo batch` without --ray never loads it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huatuo_cli.answering.jobs import BadFile, DecoderCrash, Job, StudyInputs
from huatuo_cli.answering.record import build_record
from huatuo_cli.errors import HuatuoError, is_data_failure

if TYPE_CHECKING:
    from huatuo_cli.batch.progress import Progress
    from huatuo_cli.batch.results import BatchState
    from huatuo_cli.batch.runner import Summary
    from huatuo_cli.engine.llm import Sampling

#: how often one job may lose its actor before it becomes an error line
MAX_ATTEMPTS = 3
#: how long the driver waits for a first (or, with every actor lost, a replacement) actor
START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RaySettings:
    """What `batch --ray` needs to start the actors: where the cluster is and how to load the model."""

    address: str                      # "host:port" of the cluster's head (GCS), or "auto" (RAY_ADDRESS)
    bundle: Path                      # a path every node sees (shared storage); verified on each node
    sampling: Sampling
    actors: int | None = None         # None: one per alive node
    gpus_per_actor: float = 0.0
    device: str = "auto"
    vision: str = "onnx"
    threads: int | None = None
    ship: bool = False                # the driver decodes each study and ships its images


class StudyActor:
    """One loaded, verified bundle on a Ray node; `ray.remote` makes it an actor (`_actor_class`)."""

    def __init__(self, bundle: str, sampling: Sampling, device: str, vision: str, threads: int | None) -> None:
        import ray

        from huatuo_cli.answering.service import AnswerService

        self.node: str = ray.get_runtime_context().get_node_id()
        self.service = AnswerService.open(Path(bundle), command="batch", sampling=sampling, device=device,
                                          vision=vision, threads=threads, node=self.node)
        self.answer_fn = self.service.study_answerer()
        self.study: tuple[str, StudyInputs] | None = None

    def info(self) -> tuple[Any, str | None, str]:
        """(model info, the bundle's verified card text or None, node id)."""
        from huatuo_cli.bundles.model_card import read_bundle_card

        bundle = self.service.model.bundle
        card = read_bundle_card(bundle.root, bundle.manifest)
        return self.service.model.info, (card.text if card is not None else None), self.node

    def load(self, job: Job, inputs: StudyInputs | None, isolated: bool, root: str | None) -> tuple[Any, ...]:
        """Decode the job's study here (or take the driver's `inputs`); ("ok", inputs) for the
        driver's thumbnails, or ("error", reason, files, crashed) for the study's error line."""
        from huatuo_cli.batch.runner import _failed_files, _reason, load_isolated

        base = Path(root) if root else None
        self.study = None
        try:
            if inputs is None:
                inputs = load_isolated(job, base) if isolated else job.load()
            if not inputs.images:
                raise HuatuoError("no usable images in this study")
        except BaseException as exc:  # one bad study is its error line (as locally)
            if not is_data_failure(exc) and not isinstance(exc, Exception):
                raise
            return ("error", _reason(exc, base), _failed_files(exc, job, base), isinstance(exc, DecoderCrash))
        self.study = (job.key, inputs)
        return ("ok", inputs, self.node)

    def answer(self, key: str, question: str, study_id: str | None) -> tuple[Any, ...]:
        """("ok", Answer, seconds), ("error", reason) or ("skip",) when the study did not load."""
        from huatuo_cli.batch.runner import _reason

        if self.study is None or self.study[0] != key:
            return ("skip",)
        t0 = time.perf_counter()
        try:
            answer = self.answer_fn(self.study[1].images, question, study_id)
        except Exception as exc:
            return ("error", _reason(exc, None))
        return ("ok", answer, time.perf_counter() - t0)


def _actor_class(ray: Any, settings: RaySettings) -> Any:
    return ray.remote(num_cpus=1, num_gpus=settings.gpus_per_actor, max_restarts=0,
                      max_task_retries=0)(StudyActor)


def connect(address: str) -> Any:
    """Connect to the cluster (ray imported here, through extras.require: a missing extra names `cluster`)."""
    from huatuo_cli.extras import require

    ray = require("ray")
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise HuatuoError(f"cannot reach the Ray cluster at {address} ({' '.join(str(exc).split())[:300]})",
                              hint="start the cluster (Ray's own start command on its head node) or give its address: "
                                   "--ray HOST:PORT, or --ray auto with RAY_ADDRESS set") from exc
    return ray


def disconnect() -> None:
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    from ray import exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "OwnerDiedError", "ObjectLostError",
             "NodeDiedError", "WorkerCrashedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


@dataclass
class _Flight:
    """A job on an actor: the refs still out, and what came back so far."""

    job: Job
    actor: int
    refs: set[Any] = field(default_factory=set)
    failed: int = 0
    answered: int = 0
    study_failed: bool = False
    node: str = ""
    inputs: StudyInputs | None = None


class _Actors:
    """The actor pool: live actors (index -> handle), those starting, and the idle ones."""

    def __init__(self, ray: Any, settings: RaySettings) -> None:
        self.ray = ray
        self.settings = settings
        self.cls = _actor_class(ray, settings)
        self.live: dict[int, Any] = {}
        self.starting: dict[Any, tuple[int, Any]] = {}  # info ref -> (index, handle)
        self.idle: collections.deque[int] = collections.deque()
        self.node: dict[int, str] = {}
        self.count = 0

    def spawn(self) -> None:
        handle = self.cls.options(scheduling_strategy="SPREAD").remote(
            str(self.settings.bundle), self.settings.sampling, self.settings.device, self.settings.vision,
            self.settings.threads)
        self.starting[handle.info.remote()] = (self.count, handle)
        self.count += 1

    def started(self, ref: Any) -> tuple[Any, str | None, str]:
        index, handle = self.starting.pop(ref)
        info: tuple[Any, str | None, str] = self.ray.get(ref)
        self.live[index] = handle
        self.node[index] = info[2]
        self.idle.append(index)
        return info

    def lose(self, index: int) -> None:
        handle = self.live.pop(index, None)
        if index in self.idle:
            self.idle.remove(index)
        if handle is not None:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:  # already gone with its node
                pass

    def close(self) -> None:
        for handle in [*self.live.values(), *(h for _, h in self.starting.values())]:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:
                pass


def run_on_ray(state: BatchState, jobs: Sequence[Job | BadFile], questions: list[str], settings: RaySettings, *,
               summary: Summary, progress: Progress, root: Path | None, write_srs: bool,
               finish_study: Callable[[list[Job]], str], check_model: Callable[[Any], None],
               crashed: set[str]) -> None:
    """The cluster's counterpart of the local loop in runner._run_locked (same state, same lines)."""
    from huatuo_cli.batch.report import save_thumbnails
    from huatuo_cli.batch.runner import _load_study

    by_study: dict[str, list[Job]] = {}
    for job in jobs:
        if isinstance(job, Job):
            by_study.setdefault(job.study_key, []).append(job)
    remaining = {key: len(group) for key, group in by_study.items()}

    def finished(job: Job, status: str) -> None:
        remaining[job.study_key] -= 1
        if write_srs and remaining[job.study_key] == 0:
            status += finish_study(by_study[job.study_key])
        progress.step(job.key, status)

    queue: collections.deque[Job] = collections.deque()
    for job in jobs:
        if isinstance(job, BadFile):
            state.add_error(kind="file", key=job.key, reason=job.reason)
            summary.bad_files += 1
            progress.step("file", "skipped: not usable")
            continue
        pending = state.pending(job.key, questions)
        summary.skipped += len(questions) - len(pending)
        if pending:
            queue.append(job)
        else:
            finished(job, "done earlier")
    if not queue:
        return  # a finished batch rerun connects to nothing and loads no model

    ray = connect(settings.address)
    lost_errors = _lost_errors(ray)
    actors = _Actors(ray, settings)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for _ in range(settings.actors or max(1, len(nodes))):
        actors.spawn()
    flights: dict[Any, _Flight] = {}      # ref -> the job it belongs to
    kinds: dict[Any, tuple[str, str | None]] = {}  # ref -> ("load", None) | ("answer", question)
    attempts: collections.Counter[str] = collections.Counter()
    checked = False
    model: Any = None
    started_at = time.monotonic()
    waiting_since = time.monotonic()

    def dispatch(index: int, job: Job) -> None:
        pending = state.pending(job.key, questions)  # recomputed: a retry resends only what is missing
        flight = _Flight(job, index, node=actors.node[index])
        inputs = None
        if settings.ship:
            inputs = _load_study(state, job, job.key in crashed, root, summary)
            if inputs is None:
                actors.idle.append(index)
                finished(job, "failed: see errors.jsonl")
                return
        handle = actors.live[index]
        # a study that crashed a run before, or lost its actor twice (a decoder crash, not a node): in a child
        isolated = job.key in crashed or attempts[job.key] >= 2
        load = handle.load.remote(job if inputs is None else _no_loader(job), inputs, isolated,
                                  str(root) if root else None)
        flight.refs.add(load)
        kinds[load] = ("load", None)
        for question in pending:
            ref = handle.answer.remote(job.key, question, job.audit_id or job.key)
            flight.refs.add(ref)
            kinds[ref] = ("answer", question)
        for ref in flight.refs:
            flights[ref] = flight

    def lose(index: int) -> None:
        """The actor is gone (its node lost, or its process killed): its jobs go back to the queue."""
        actors.lose(index)
        back = {id(f): f for f in flights.values() if f.actor == index}
        for flight in back.values():
            for ref in flight.refs:
                flights.pop(ref, None)
                kinds.pop(ref, None)
            attempts[flight.job.key] += 1
            if attempts[flight.job.key] >= MAX_ATTEMPTS:
                state.add_error(kind="study", key=flight.job.key, crashed=True,
                                reason=f"the Ray actor answering this study was lost {MAX_ATTEMPTS} times")
                summary.failed += 1
                finished(flight.job, "failed: see errors.jsonl")
            else:
                queue.appendleft(flight.job)
        actors.spawn()  # a replacement joins when Ray can place it (not while its node is down)

    try:
        while queue or flights:
            while queue and actors.idle:
                dispatch(actors.idle.popleft(), queue.popleft())
            waiting = list(flights) + list(actors.starting)
            if not waiting:
                continue
            if not actors.live and time.monotonic() - waiting_since > START_TIMEOUT_S:
                raise HuatuoError(f"no Ray actor could be started in {START_TIMEOUT_S:.0f} s "
                                  f"({len(state.results)} answers saved so far)",
                                  hint="check the cluster (`ray status`): the actors need 1 CPU"
                                       + (f" and {settings.gpus_per_actor:g} GPU" if settings.gpus_per_actor else "")
                                       + " each; rerun the same command to resume")
            ready, _ = ray.wait(waiting, num_returns=1, timeout=5.0)
            for ref in ready:
                if ref in actors.starting:
                    index, _handle = actors.starting[ref]
                    try:
                        model, card, _node = actors.started(ref)
                    except lost_errors:
                        continue  # could not start (its node is gone): the others go on
                    except Exception as exc:  # the bundle failed to load or verify on that node
                        raise HuatuoError(f"a Ray actor could not load the model: {' '.join(str(exc).split())[:400]}",
                                          hint="the bundle path must exist on every node (shared storage)") from exc
                    if not checked:
                        check_model(model)
                        if card is not None:
                            from huatuo_cli.bundles.model_card import CARD_NAME
                            from huatuo_cli.privacy import write_private

                            write_private(state.out / CARD_NAME, card)
                        checked = True
                    continue
                flight = flights.get(ref)
                if flight is None:
                    continue  # its actor was lost meanwhile
                try:
                    outcome = ray.get(ref)
                except lost_errors:  # the ref still belongs to its flight: lose() puts the job back
                    lose(flight.actor)
                    if not actors.live:
                        waiting_since = time.monotonic()
                    continue
                except Exception as exc:  # a bug behind the call: this question's (or study's) error line
                    outcome = ("error", f"{type(exc).__name__} on the Ray actor", [], False)
                kind, question = kinds.pop(ref)
                flights.pop(ref)
                flight.refs.discard(ref)
                if kind == "load":
                    if outcome[0] == "ok":
                        inputs = outcome[1]
                        save_thumbnails(state.out, flight.job.key, inputs.images, metas=inputs.metas,
                                        overlays=inputs.overlays)
                        flight.inputs = inputs
                    else:
                        flight.study_failed = True
                        state.add_error(kind="study", key=flight.job.key, reason=outcome[1], files=outcome[2],
                                        crashed=outcome[3])
                        summary.failed += 1
                elif outcome[0] == "ok":
                    if question in state.pending(flight.job.key, [str(question)]):  # never written twice
                        inputs = flight.inputs
                        assert inputs is not None, "an answer comes after its study's load"
                        record = build_record(study=flight.job.key, series=flight.job.series, question=str(question),
                                              answer=outcome[1], model=model, inputs=inputs.inputs,
                                              window=inputs.window, total_s=outcome[2])
                        state.add_result(record)
                        summary.answered += 1
                        flight.answered += 1
                elif outcome[0] == "error":
                    flight.failed += 1
                    state.add_error(kind="study", key=flight.job.key, question=question, reason=outcome[1])
                if not flight.refs:  # the job is done
                    actors.idle.append(flight.actor)
                    if flight.study_failed:
                        finished(flight.job, "failed: see errors.jsonl")
                        continue
                    summary.failed += bool(flight.failed)
                    rate = summary.answered / max(time.monotonic() - started_at, 1e-9)  # across the cluster
                    finished(flight.job, f"{flight.answered} answered" + (f", {flight.failed} failed" if flight.failed else "")
                             + f" on node {flight.node[:8]} ({rate:.2f} answers/s, {len(set(actors.node[i] for i in actors.live))} nodes)")
    finally:
        actors.close()


def _no_loader(job: Job) -> Job:
    """The job without its decoder, for an actor that gets the driver's images (--ray-ship)."""
    from dataclasses import replace

    def shipped() -> StudyInputs:
        raise HuatuoError("the images of this study were shipped by the driver")

    return replace(job, load=shipped)
