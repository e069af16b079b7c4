"""`huatuo eval BUNDLE DATA.json --out DIR` and `huatuo eval score ITEMS.jsonl`: a bundle measured on
multiple-choice medical VQA by the HuatuoGPT-Vision authors' protocol (docs/eval.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from huatuo_cli.answering.model_options import device_option, images_option, make_sampling, sampling_options
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.options import window_option

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling

class DefaultRun(click.Group):
    """`huatuo eval BUNDLE DATA ...` is `huatuo eval run BUNDLE DATA ...`; `huatuo eval score` re-scores."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultRun)
def eval() -> None:  # noqa: A001 - the command's name
    """Measure a bundle on multiple-choice medical VQA the way the HuatuoGPT-Vision paper did.

    `huatuo eval BUNDLE DATA.json --out DIR` runs the items (`eval run`); `huatuo eval score` re-scores
    saved responses of any model with the same scorer. Protocol and scorer: docs/eval.md.

    \b
    Examples:
      huatuo eval /srv/bundles/huatuo-7b-q4_k_m Medical_Multimodal_Evaluation_Data/medical_multimodel_evaluation_data.json --out eval-q4
      huatuo eval /srv/bundles/huatuo-7b-q4_k_m data.json --out eval-q4 --compare /srv/bundles/huatuo-7b-f16
      huatuo eval score eval-q4/items.jsonl --json
    """


@eval.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="output folder: items.jsonl (one scored line per item), report.md, report.html; rerun to resume")
@click.option("--datasets", multiple=True, metavar="NAME", help="only these data sets (repeat the option)")
@click.option("--limit", type=click.IntRange(1), default=None, help="at most N items per data set")
@click.option("--sampling", "sampling_mode", type=click.Choice(["greedy", "official"]), default="greedy", show_default=True,
              help="greedy: the decoding options below (reproducible); official: temperature 0.2, repetition "
                   "penalty 1.2, seed 42, 256 tokens (the official evaluation)")
@click.option("--compare", "other", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="OTHER_BUNDLE", help="also run OTHER_BUNDLE on the same items and compare (difference, "
                                           "agreement, McNemar's exact test)")
@click.option("--reference", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="CHECKPOINT", help="also run the PyTorch reference of CHECKPOINT (server; `convert` extra)")
@window_option()
@sampling_options
@device_option
@images_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON on stdout")
def run(bundle: Path, data: Path, out: Path, datasets: tuple[str, ...], limit: int | None, sampling_mode: str,
        other: Path | None, reference: Path | None, window: Any, sampling: Sampling, vision: str, threads: int | None,
        device: str, images: int, as_json: bool) -> None:
    """Answer every scored item of DATA (the official JSON, or JSON lines) with BUNDLE and score it.

    Resumable: rerun the same command after Ctrl-C or a crash and only unsaved items are answered.
    """
    from huatuo_cli import audit
    from huatuo_cli.evaluation import report
    from huatuo_cli.evaluation.data import load_set
    from huatuo_cli.evaluation.models import ModelRun, evaluate
    from huatuo_cli.privacy import NOTICE, private_dir

    if sampling_mode == "official":
        sampling = make_sampling(max_tokens=256, temperature=0.2, top_p=1.0, repetition_penalty=1.2, seed=42)
    described = (f"{sampling_mode}: temperature {sampling.temperature}, top-p {sampling.top_p}, repetition penalty "
                 f"{sampling.repetition_penalty}, seed {sampling.seed}, max {sampling.max_tokens} tokens")
    eval_set = load_set(data, datasets=datasets, limit=limit)
    if not eval_set.items:
        raise HuatuoError(f"{data.name} holds no scored item" + (" of those data sets" if datasets else ""),
                          hint="scored items have options and a question_type other than open")
    private_dir(out)
    audit.ensure_writable()
    click.echo(NOTICE, err=True)
    runs = [ModelRun("bundle", bundle)]
    if other is not None:
        runs.append(ModelRun("compare", other))
    if reference is not None:
        runs.append(ModelRun("reference", bundle, reference))
    done = evaluate(eval_set, out, runs, sampling=sampling,
                    options={"device": device, "vision": vision, "threads": threads, "window": window, "images": images})
    names, lines, interrupted = done.names, done.lines, done.interrupted
    results = {f"{role}: {names[role]}": summary for role, summary in done.summaries.items()}
    comparisons = {}
    for role in ("compare", "reference"):
        if role in lines and not interrupted:
            comparisons[role] = report.compare(lines["bundle"], lines[role])
    sentences = [report.compare_sentence(names["bundle"], names[r], c[report.OVERALL]) for r, c in comparisons.items()]
    meta = {"data": data.name, "data_sha256": eval_set.sha256, "items": len(eval_set.items),
            "not_scored": dict(eval_set.skipped), "sampling": described, "notice": NOTICE}
    report.write_reports(out, meta, results, sentences)
    summary = results[f"bundle: {names['bundle']}"]
    if not interrupted and len(lines["bundle"]) == len(eval_set.items):
        report.write_last(bundle, summary, data=data.name, data_sha256=eval_set.sha256, sampling=described, out=out)
    if as_json:
        payload: dict[str, Any] = {**summary, "model": names["bundle"], "not_scored": dict(eval_set.skipped)}
        for role, c in comparisons.items():
            payload[role] = {"model": names[role], **c}
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_table(summary)
        for sentence in sentences:
            click.echo(sentence)
        click.echo(f"report: {out / 'report.md'}")
    if interrupted:
        raise SystemExit(130)
    if done.failed:
        raise HuatuoError("some items could not be answered (see the *.errors.jsonl files); rerun to retry them")


def _print_table(summary: dict[str, Any]) -> None:
    for name, cell in [*summary["datasets"].items(), ("overall", summary["overall"])]:
        lo, hi = cell["ci95"]
        paper = f"  paper {cell['paper']:.1f} ({cell['difference']:+.1f})" if "paper" in cell else ""
        click.echo(f"{name:24s} {cell['correct']:5d}/{cell['n']:<5d} {100 * cell['accuracy']:5.1f} % "
                   f"(95 % CI {100 * lo:.1f}-{100 * hi:.1f}){paper}")


@eval.command()
@click.argument("items", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON on stdout")
def score(items: Path, as_json: bool) -> None:
    """Re-score saved responses (JSON lines with dataset, options, answer, response; any model's).

    \b
    Example:
      huatuo eval score other-model-responses.jsonl --json
    """
    from huatuo_cli.evaluation.report import summarise
    from huatuo_cli.evaluation.scorer import score_line
    from huatuo_cli.jsonl import read_jsonl

    lines = []
    for number, line in enumerate(read_jsonl(items), 1):
        missing = [k for k in ("options", "answer", "response") if k not in line]
        if missing or not isinstance(line.get("options"), list) or not line["options"]:
            raise HuatuoError(f"{items.name} line {number} lacks " + (", ".join(missing) or "options"))
        lines.append({**score_line(line), "dataset": str(line.get("dataset") or "unknown")})
    summary = summarise(lines)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
