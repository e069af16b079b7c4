"""`huatuo batch DIR --out OUT`: every question of every study in a folder, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from huatuo_cli.ask_cmd import DEVICE_HELP, sampling_options
from huatuo_cli.imaging.options import frame_option, window_option
from huatuo_cli.privacy import NOTICE


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
    return unique


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="output folder (created owner-only; rerun with the same folder to resume)")
@click.option("--question", "-q", "question", multiple=True, help="a question to ask of every study (repeatable)")
@click.option("--questions", "questions_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="file with one question per line")
@click.option("--per", type=click.Choice(["study", "series"]), default="study", show_default=True,
              help="one answer per study, or per series")
@click.option("--sr", "write_srs", is_flag=True, help="also write one DICOM Comprehensive SR per study (unverified)")
@click.option("--model", "model_path", metavar="BUNDLE", help="model bundle (default: HUATUO_MODEL, config, models folder)")
@click.option("--allow-model-change", is_flag=True,
              help="resume into an OUT that holds answers of another model (both stay in results.jsonl, "
                   "each record names its model); without it such a resume is refused")
@window_option()
@frame_option()
@click.option("--images", type=click.IntRange(1, 6), default=6, show_default=True, help="images per study")
@sampling_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True, help=DEVICE_HELP)
@click.pass_context
def batch(ctx: click.Context, folder: Path, out: Path, question: tuple[str, ...], questions_file: Path | None,
          per: str, write_srs: bool, model_path: str | None, allow_model_change: bool, window: Any, frame: Any, images: int,
          max_tokens: int, temperature: float, seed: int, top_p: float,
          repetition_penalty: float, vision: str, threads: int | None, device: str) -> None:
    """Ask every question of every study under FOLDER; write results, errors and reports to OUT.

    OUT gets results.jsonl (one record per study and question, written as each finishes),
    errors.jsonl, report.md, a self-contained report.html and, with --sr, sr/*.dcm. Reruns resume:
    finished answers are kept, the rest is done. Exit code 0: all succeeded, 1: some failed,
    2: usage error, 130: interrupted.

    \b
    Examples:
      huatuo batch /data/export --out /data/huatuo-run -q "Describe the findings."
      huatuo batch /data/export --out run2 --questions questions.txt --per series --sr
    """
    from huatuo_cli.answering import load_model, model_answerer
    from huatuo_cli.batch.progress import make_progress
    from huatuo_cli.batch.runner import EXIT_INTERRUPTED, run_batch
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.inputs import jobs_from_folder
    from huatuo_cli.locate import find_bundle

    asked = read_questions(question, questions_file)
    root, out = folder.resolve(), out.resolve()
    if out == root or root in out.parents:
        raise click.UsageError("--out must not be inside FOLDER (the outputs would be scanned as inputs)")
    bundle = find_bundle(model_path)
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                        repetition_penalty=repetition_penalty, seed=seed)
    jobs = jobs_from_folder(root, per=per, window=window, frame=frame, images=images)
    click.echo(f"{NOTICE}\n{sum(1 for j in jobs if hasattr(j, 'load'))} {per} jobs, "
               f"{sum(1 for j in jobs if not hasattr(j, 'load'))} unusable files, {len(asked)} questions", err=True)

    def make_answerer():
        model = load_model(bundle, device=device, vision=vision, threads=threads)
        return model_answerer(model, sampling), model.info

    summary = run_batch(jobs, asked, out, make_answerer, write_srs=write_srs, progress=make_progress(), root=root,
                        allow_model_change=allow_model_change)
    click.echo(f"{summary.answered} answered, {summary.skipped} done earlier, {summary.failed} failed, "
               f"{summary.bad_files} unusable files" + (f", {summary.srs} SRs" if write_srs else "")
               + f"; see {out}", err=True)
    if summary.exit_code == EXIT_INTERRUPTED:
        click.echo("interrupted: every finished answer is saved; rerun the same command to resume", err=True)
    ctx.exit(summary.exit_code)
