"""`huatuo batch DIR --out OUT`: every question of every study in a folder, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from huatuo_cli.imaging.options import frame_option, overlays_option, window_option
from huatuo_cli.model_options import device_option, images_option, model_option, sampling_options
from huatuo_cli.privacy import NOTICE, writable_folder
from huatuo_cli.prompt import check_question

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.engine.session import ModelInfo, VisionLanguageModel
    from huatuo_cli.jobs import AnswerFn


def read_questions(question: tuple[str, ...], questions_file: Path | None) -> list[str]:
    """--question (repeatable) or --questions FILE (one per line, # comments): exactly one of them."""
    if bool(question) == bool(questions_file):
        raise click.UsageError("give --question Q (repeatable) or --questions FILE, not both and not neither")
    if questions_file:
        try:
            lines = questions_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise click.BadParameter("the file is not UTF-8 text; save it as UTF-8", param_hint="--questions") from None
        question = tuple(q.strip() for q in lines if q.strip() and not q.lstrip().startswith("#"))
        if not question:
            raise click.UsageError(f"{questions_file} holds no question")
    unique = list(dict.fromkeys(q.strip() for q in question if q.strip()))
    if not unique:
        raise click.UsageError("empty question")
    return [check_question(q) for q in unique]


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="output folder (created owner-only; rerun with the same folder to resume)")
@click.option("--question", "-q", "question", multiple=True, help="a question to ask of every study (repeatable)")
@click.option("--questions", "questions_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="file with one question per line")
@click.option("--per", type=click.Choice(["study", "series"]), default="study", show_default=True,
              help="one answer per study, or per series")
@click.option("--sr", "write_srs", is_flag=True, help="also write one DICOM SR per study (TID 1500, unverified draft; docs/sr.md)")
@model_option
@window_option()
@frame_option()
@overlays_option()
@click.option("--thumbnails", type=click.Choice(["safe", "all", "none"]), default="safe", show_default=True,
              help="thumbnails in report.html/md: 'safe' leaves out images that may carry burned-in "
                   "annotation (patient names on US and secondary captures), 'all' keeps them, 'none' shows none")
@images_option
@sampling_options
@device_option
@click.pass_context
def batch(ctx: click.Context, folder: Path, out: Path, question: tuple[str, ...], questions_file: Path | None,
          per: str, write_srs: bool, model_path: str | None, window: Any, frame: Any, overlays: str,
          thumbnails: str, images: int,
          sampling: Sampling, vision: str, threads: int | None, device: str) -> None:
    """Ask every question of every study under FOLDER; write results, errors and reports to OUT.

    OUT gets results.jsonl (one record per study and question, written as each finishes),
    errors.jsonl, report.md, a self-contained report.html and, with --sr, sr/*.dcm (one DICOM SR per
    study, TID 1500, rewritten when a rerun adds answers). Reruns resume:
    finished answers are kept, the rest is done. Exit code 0: all succeeded, 1: some failed,
    2: usage error, 130: interrupted.

    \b
    Examples:
      huatuo batch /data/export --out /data/huatuo-run -q "Describe the findings."
      huatuo batch /data/export --out run2 --questions questions.txt --per series --sr
      huatuo batch /data/us --out run3 -q "Describe." --thumbnails all --overlays model
    """
    from huatuo_cli import audit
    from huatuo_cli.answering import load_model, model_answerer
    from huatuo_cli.batch.progress import make_progress
    from huatuo_cli.batch.runner import EXIT_INTERRUPTED, run_batch
    from huatuo_cli.inputs import jobs_from_folder
    from huatuo_cli.locate import find_bundle

    asked = read_questions(question, questions_file)
    root, out = folder.resolve(), out.resolve()
    if out == root or root in out.parents:
        raise click.UsageError("--out must not be inside FOLDER (the outputs would be scanned as inputs)")
    writable_folder(out, what="--out")
    bundle = find_bundle(model_path)
    audit.ensure_writable()  # before any answer: an answer must never go unaudited
    jobs = jobs_from_folder(root, per=per, window=window, frame=frame, images=images, overlays=overlays)
    click.echo(f"{NOTICE}\n{sum(1 for j in jobs if hasattr(j, 'load'))} {per} jobs, "
               f"{sum(1 for j in jobs if not hasattr(j, 'load'))} unusable files, {len(asked)} questions", err=True)

    loaded: list[VisionLanguageModel] = []  # at most one; closed whatever happens

    def make_answerer() -> tuple[AnswerFn, ModelInfo]:
        model = load_model(bundle, device=device, vision=vision, threads=threads)
        loaded.append(model)
        return model_answerer(model, sampling), model.info

    try:
        summary = run_batch(jobs, asked, out, make_answerer, write_srs=write_srs, progress=make_progress(), root=root,
                            thumbnails=thumbnails)
    finally:
        for model in loaded:
            model.close()
    click.echo(f"{summary.answered} answered, {summary.skipped} done earlier, {summary.failed} failed, "
               f"{summary.bad_files} unusable files" + (f", {summary.srs} SRs" if write_srs else "")
               + f"; see {out}", err=True)
    if summary.exit_code == EXIT_INTERRUPTED:
        click.echo("interrupted: every finished answer is saved; rerun the same command to resume", err=True)
    ctx.exit(summary.exit_code)
