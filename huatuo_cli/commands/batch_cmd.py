"""`huatuo batch DIR --out OUT`: every question of every study in a folder, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from huatuo_cli.answering.model_options import device_option, images_option, model_option, sampling_options
from huatuo_cli.engine.prompt import check_question
from huatuo_cli.imaging.options import frame_option, overlays_option, window_option
from huatuo_cli.privacy import NOTICE, writable_folder

if TYPE_CHECKING:
    from huatuo_cli.answering.jobs import AnswerFn
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.engine.session import ModelInfo
    from huatuo_cli.send.sender import Sender


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


def _check_source(folder: Path | None, from_pacs: str | None, study_uids: tuple[str, ...], since: Any) -> None:
    """FOLDER, or --from with --study/--since: exactly one source."""
    if bool(folder) == bool(from_pacs):
        raise click.UsageError("give FOLDER or --from PACS, not both and not neither")
    if from_pacs and not (study_uids or since):
        raise click.UsageError("--from needs --study UID (repeatable) or --since YYYY-MM-DD")
    if (study_uids or since) and not from_pacs:
        raise click.UsageError("--study and --since select studies at a PACS: they need --from")


def _retrieve(from_pacs: str, study_uids: tuple[str, ...], since: Any) -> Path:
    """Fetch the selected studies by C-GET into the private cache; the folder to run the batch on."""
    from huatuo_cli.send.destination import resolve
    from huatuo_cli.send.retrieve import retrieve

    fetched = retrieve(resolve(from_pacs, option="--from"), studies=list(study_uids), since=since.date() if since else None)
    click.echo(f"retrieved {fetched.instances} instances of {fetched.studies} studies from {from_pacs}", err=True)
    return fetched.folder.resolve()


def _sender(send_to: str | None, write_srs: bool) -> Sender | None:
    """The PACS sender for --send, resolved before any model is loaded so a bad name fails fast."""
    if not send_to:
        return None
    if not write_srs:
        raise click.UsageError("--send sends the SRs: it needs --sr")
    from huatuo_cli.send.destination import resolve
    from huatuo_cli.send.sender import Sender

    return Sender(resolve(send_to, option="--send"))


@click.command()
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="output folder (created owner-only; rerun with the same folder to resume)")
@click.option("--question", "-q", "question", multiple=True, help="a question to ask of every study (repeatable)")
@click.option("--questions", "questions_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="file with one question per line")
@click.option("--per", type=click.Choice(["study", "series"]), default="study", show_default=True,
              help="one answer per study, or per series")
@click.option("--sr", "write_srs", is_flag=True, help="also write one DICOM SR per study (TID 1500, unverified draft; docs/sr.md)")
@click.option("--send", "send_to", metavar="NAME|AET@HOST:PORT|URL",
              help="with --sr: send each study's SR to this PACS as it is written (see `huatuo send`)")
@click.option("--from", "from_pacs", metavar="NAME|AET@HOST:PORT",
              help="instead of FOLDER: retrieve the studies from this PACS (C-GET) into huatuo's private cache")
@click.option("--study", "study_uids", multiple=True, metavar="UID", help="with --from: a Study Instance UID (repeatable)")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="with --from: every study dated this day (YYYY-MM-DD) or later")
@model_option
@click.option("--allow-model-change", is_flag=True,
              help="resume into an OUT that holds answers of another model (both stay in results.jsonl, "
                   "each record names its model); without it such a resume is refused")
@window_option()
@frame_option()
@overlays_option()
@click.option("--thumbnails", type=click.Choice(["safe", "all", "none"]), default="safe", show_default=True,
              help="thumbnails in report.html/md: 'safe' leaves out images that may carry burned-in "
                   "annotation (patient names on US and secondary captures), 'all' keeps them, 'none' shows none")
@click.option("--ray", "ray_address", metavar="HOST:PORT|auto",
              help="answer on an existing Ray cluster (its head's address; 'auto': RAY_ADDRESS): one actor per "
                   "node holds the verified model, this machine alone writes OUT (docs/cluster.md; extra 'cluster')")
@click.option("--ray-actors", type=click.IntRange(min=1), metavar="N",
              help="with --ray: how many actors (each loads the model once) [default: one per node]")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0, show_default=True, metavar="G",
              help="with --ray: GPUs Ray reserves for each actor")
@click.option("--ray-ship", is_flag=True,
              help="with --ray: decode each study here and send its images to the actor, for nodes that do not "
                   "see FOLDER (always so with --from)")
@images_option
@sampling_options
@device_option
@click.pass_context
def batch(ctx: click.Context, folder: Path | None, out: Path, question: tuple[str, ...], questions_file: Path | None,
          per: str, write_srs: bool, send_to: str | None, from_pacs: str | None, study_uids: tuple[str, ...],
          since: Any, model_path: str | None, allow_model_change: bool, window: Any, frame: Any, overlays: str,
          thumbnails: str, ray_address: str | None, ray_actors: int | None, gpus_per_actor: float, ray_ship: bool,
          images: int, sampling: Sampling, vision: str, threads: int | None, device: str) -> None:
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
      huatuo batch /data/export --out run3 -q "Describe the findings." --sr --send main
      huatuo batch --from main --since 2026-11-24 --out run4 -q "Describe the findings." --sr --send main
      huatuo batch /shared/export --out run5 -q "Describe the findings." --model /shared/bundle --ray head:6379
    """
    from huatuo_cli import audit
    from huatuo_cli.answering.inputs import jobs_from_folder
    from huatuo_cli.answering.service import AnswerService
    from huatuo_cli.batch.progress import make_progress
    from huatuo_cli.batch.runner import EXIT_INTERRUPTED, run_batch
    from huatuo_cli.bundles.model_card import copy_card_to
    from huatuo_cli.engine.quant_probe import find_model

    asked = read_questions(question, questions_file)
    _check_source(folder, from_pacs, study_uids, since)
    if not ray_address and (ray_actors or gpus_per_actor or ray_ship):
        raise click.UsageError("--ray-actors, --gpus-per-actor and --ray-ship go with --ray")
    out = out.resolve()
    if folder and (out == folder.resolve() or folder.resolve() in out.parents):
        raise click.UsageError("--out must not be inside FOLDER (the outputs would be scanned as inputs)")
    send_sr = _sender(send_to, write_srs)  # a bad destination fails before anything is created
    writable_folder(out, what="--out")
    bundle = find_model(model_path)
    audit.ensure_writable()  # before any answer: an answer must never go unaudited
    root = folder.resolve() if folder else _retrieve(from_pacs or "", study_uids, since)
    jobs = jobs_from_folder(root, per=per, window=window, frame=frame, images=images, overlays=overlays)
    click.echo(f"{NOTICE}\n{sum(1 for j in jobs if hasattr(j, 'load'))} {per} jobs, "
               f"{sum(1 for j in jobs if not hasattr(j, 'load'))} unusable files, {len(asked)} questions", err=True)

    loaded: list[AnswerService] = []  # at most one; closed whatever happens

    def make_answerer() -> tuple[AnswerFn, ModelInfo]:
        service = AnswerService.open(bundle, command="batch", sampling=sampling, device=device, vision=vision,
                                     threads=threads)
        loaded.append(service)
        copy_card_to(service.model.bundle, out)  # report.html links to the (verified) model card beside it
        return service.study_answerer(), service.model.info

    cluster = None
    if ray_address:
        from huatuo_cli.batch.ray_run import RaySettings

        cluster = RaySettings(address=ray_address, bundle=bundle.resolve(), sampling=sampling, actors=ray_actors,
                              gpus_per_actor=gpus_per_actor, device=device, vision=vision, threads=threads,
                              ship=ray_ship or bool(from_pacs))  # the PACS cache is this machine's alone
    try:
        summary = run_batch(jobs, asked, out, make_answerer, write_srs=write_srs, progress=make_progress(), root=root,
                            thumbnails=thumbnails, send_sr=send_sr.send if send_sr else None,
                            allow_model_change=allow_model_change, ray=cluster)
    finally:
        for service in loaded:
            service.close()
        if cluster is not None:
            from huatuo_cli.batch.ray_run import disconnect

            disconnect()
    click.echo(f"{summary.answered} answered, {summary.skipped} done earlier, {summary.failed} failed, "
               f"{summary.bad_files} unusable files" + (f", {summary.srs} SRs" if write_srs else "")
               + (f", {summary.sent} SRs sent, {summary.unsent} not sent" if send_sr else "")
               + f"; see {out}", err=True)
    if summary.exit_code == EXIT_INTERRUPTED:
        click.echo("interrupted: every finished answer is saved; rerun the same command to resume", err=True)
    ctx.exit(summary.exit_code)
