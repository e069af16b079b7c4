"""`huatuo ask PATH... QUESTION`: one question (and follow-ups) about one study, answer streamed.

stdout carries only the answer (or, with --json, one versioned result per answer), so it can be
piped; the not-for-diagnostic-use notice and progress go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from huatuo_cli.answering.model_options import device_option, images_option, model_option, sampling_options
from huatuo_cli.engine.prompt import check_question
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.options import frame_option, overlays_option, window_option
from huatuo_cli.privacy import NOTICE

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling

@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.argument("question")
@model_option
@window_option()
@frame_option()
@overlays_option()
@sampling_options
@device_option
@images_option
@click.option("--json", "as_json", is_flag=True, help="print a versioned JSON result instead of streaming text")
@click.option("-i", "--interactive", is_flag=True, help="then read follow-up questions from the terminal")
def ask(paths: tuple[Path, ...], question: str, model_path: str | None, window: Any, frame: Any, overlays: str,
        sampling: Sampling, vision: str, threads: int | None, device: str, images: int, as_json: bool,
        interactive: bool) -> None:
    """Ask QUESTION about the images in PATH (DICOM files, PNG/JPEG/TIFF, or series folders).

    A folder contributes representative images of each series (at most 6 images in all).

    \b
    Examples:
      huatuo ask scan.dcm "Is there a pneumothorax?"
      huatuo ask --window lung ct_series/ "Describe the findings."
      huatuo ask --json --model /srv/bundles/huatuo-7b-q4_k_m cxr.dcm "Any fracture?" > answer.json
      huatuo ask -i mri/ "What sequence is this?"
    """
    from huatuo_cli import audit
    from huatuo_cli.answering.inputs import inputs_from_paths
    from huatuo_cli.answering.record import build_record
    from huatuo_cli.answering.service import AnswerService
    from huatuo_cli.engine.quant_probe import find_model
    from huatuo_cli.engine.session import Conversation
    from huatuo_cli.errors import HuatuoError

    question = check_question(question)
    bundle = find_model(model_path)
    audit.ensure_writable()  # before the images are read: refused early, as AnswerService.open would
    study_key, audit_id, inputs = inputs_from_paths(paths, window=window, frame=frame, images=images,
                                                    overlays=overlays)
    service = AnswerService.open(bundle, command="ask", sampling=sampling, device=device, vision=vision,
                                 threads=threads)
    try:  # the model holds native memory and threads: released on errors and Ctrl-C too
        conversation = Conversation(service.model, images=inputs.images)
        click.echo(NOTICE, err=True)
        while True:
            stream = None if as_json else (lambda text: click.echo(text, nl=False))
            t0 = time.perf_counter()
            try:
                answer = service.ask(conversation, question, study_id=audit_id, on_text=stream)
            except HuatuoError as exc:
                if not (interactive and conversation.turns):
                    raise
                click.echo(f"Error: {exc}", err=True)  # a follow-up failed (e.g. context full); the session goes on
                follow = _follow_up()
                if not follow:
                    break
                question = follow
                continue
            if as_json:
                record = build_record(study=study_key, question=question, answer=answer, model=service.model.info,
                                      inputs=inputs.inputs, window=inputs.window, total_s=time.perf_counter() - t0)
                click.echo(json.dumps(record, ensure_ascii=False, indent=None if interactive else 2))
            else:
                click.echo()
            if not interactive:
                break
            follow = _follow_up()
            if not follow:
                break
            question = follow
    finally:
        service.close()


def _follow_up() -> str | None:
    """Next question from stdin; empty line, 'exit' or end of input stops."""
    try:
        text = click.prompt("follow-up (empty to stop)", default="", show_default=False, err=True)
    except (EOFError, click.Abort):
        return None
    text = text.strip()
    if text.lower() in ("", "exit", "quit"):
        return None
    try:
        return check_question(text)
    except HuatuoError as exc:
        click.echo(f"Error: {exc}", err=True)
        return _follow_up()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(ask())
