"""Run one evaluation set through every model a command names: the bundle, `--compare`'s other
bundle, `--reference`'s PyTorch checkpoint; each into its own resumable file of `out`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huatuo_cli.evaluation import report
from huatuo_cli.evaluation.answerers import bundle_answerer, reference_answerer
from huatuo_cli.evaluation.data import EvalSet
from huatuo_cli.evaluation.runner import Outcome, run, saved_lines

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling

#: the bundle's scored lines; `--compare` and `--reference` write `<role>.jsonl` beside it
RESULTS = "items.jsonl"


@dataclass(frozen=True)
class ModelRun:
    """One model to evaluate: `role` is "bundle", "compare" or "reference" (then `checkpoint` is set)."""

    role: str
    bundle: Path
    checkpoint: Path | None = None


@dataclass
class Evaluated:
    """What the runs gave, by role: model names, scored lines, per-data-set summaries."""

    names: dict[str, str] = field(default_factory=dict)
    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: bool = False
    interrupted: bool = False


def model_id(bundle: Path) -> dict[str, str]:
    """The bundle's name and manifest hash: saved lines of another model are refused on resume."""
    from huatuo_cli.bundles.bundle import read_manifest

    _, digest = read_manifest(bundle)
    return {"name": Path(bundle).name, "sha256": digest}


def paper_for(bundle: Path) -> dict[str, float]:
    """The paper's figures for the checkpoint the bundle's model card names (none for an unknown one)."""
    from huatuo_cli.bundles.bundle import read_manifest
    from huatuo_cli.bundles.model_card import read_bundle_card

    manifest, _ = read_manifest(bundle)
    card = read_bundle_card(bundle, manifest)
    return report.paper_figures(card.meta if card else None)


def _run_bundle(item_set: EvalSet, out_file: Path, bundle: Path, label: str, options: dict[str, Any],
                sampling: Sampling) -> tuple[dict[str, str], Outcome]:
    from huatuo_cli.answering.service import AnswerService

    model = model_id(bundle)
    saved = {line["id"] for line in saved_lines(out_file, model_sha256=model["sha256"], data_sha256=item_set.sha256)}
    if all(item.id in saved for item in item_set.items):  # finished: no model is loaded
        return model, run(item_set, out_file, lambda item: "", model=model)
    service = AnswerService.open(bundle, command="eval", sampling=sampling, device=options["device"],
                                 vision=options["vision"], threads=options["threads"])
    try:
        answer = bundle_answerer(service, window=options["window"], images=options["images"])
        return model, run(item_set, out_file, answer, model=model, label=label)
    finally:
        service.close()


def evaluate(item_set: EvalSet, out: Path, runs: list[ModelRun], *, sampling: Sampling,
             options: dict[str, Any]) -> Evaluated:
    """Each run in turn (stopping at an interrupt); `options`: device, vision, threads, window, images."""
    done = Evaluated()
    for model_run in runs:
        out_file = out / (RESULTS if model_run.role == "bundle" else f"{model_run.role}.jsonl")
        if model_run.checkpoint is None:
            label = f"{model_run.bundle.name}: " if len(runs) > 1 else ""
            model, outcome = _run_bundle(item_set, out_file, model_run.bundle, label, options, sampling)
            paper = paper_for(model_run.bundle)
        else:
            answer, model, close = reference_answerer(model_run.checkpoint, model_run.bundle, sampling,
                                                      window=options["window"], images=options["images"])
            try:
                outcome = run(item_set, out_file, answer, model=model, label="reference: ")
            finally:
                close()
            paper = {}
        done.names[model_run.role] = model["name"]
        done.lines[model_run.role] = outcome.lines
        done.summaries[model_run.role] = report.summarise(outcome.lines, paper)
        done.failed = done.failed or outcome.failed > 0
        if outcome.interrupted:
            done.interrupted = True
            break
    return done
