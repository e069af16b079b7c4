"""`huatuo ask PATH... QUESTION`: one question (and follow-ups) about one study, answer streamed.

stdout carries only the answer (or, with --json, one versioned result per answer), so it can be
piped; the not-for-diagnostic-use notice and progress go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from huatuo_cli.imaging.options import frame_option, overlays_option, window_option
from huatuo_cli.privacy import NOTICE

DEVICE_HELP = "where the vision encoder runs: auto (TensorRT, CUDA, CPU: the first that loads), cpu, cuda or tensorrt"


def sampling_options(command):
    """Decoding and engine options shared by ask and batch."""
    command = click.option("--threads", type=click.IntRange(1, 256), default=None,
                           help="llama.cpp and ONNX Runtime threads [default: physical cores]")(command)
    command = click.option("--vision", type=click.Choice(["onnx", "mmproj"]), default="onnx", show_default=True,
                           help="image encoder: onnx (exact) or the bundle's mmproj through llama.cpp "
                                "(inexact upstream graph, for comparison)")(command)
    command = click.option("--repetition-penalty", type=click.FloatRange(1.0, 2.0), default=1.2, show_default=True,
                           help="the official HuatuoGPT-Vision CLI's value")(command)
    command = click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
                           help="nucleus sampling (with --temperature > 0)")(command)
    command = click.option("--seed", type=int, default=0, show_default=True, help="sampling seed")(command)
    command = click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
                           help="0 is greedy (reproducible drafts)")(command)
    command = click.option("--max-tokens", type=click.IntRange(1, 4096), default=512, show_default=True,
                           help="longest answer in tokens")(command)
    return command


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.argument("question")
@click.option("--model", "model_path", metavar="BUNDLE", help="model bundle (default: HUATUO_MODEL, config, models folder)")
@window_option()
@frame_option()
@overlays_option()
@sampling_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--images", type=click.IntRange(1, 6), default=6, show_default=True,
              help="most images sent from the given files and series folders (each costs 576 prompt positions)")
@click.option("--json", "as_json", is_flag=True, help="print a versioned JSON result instead of streaming text")
@click.option("-i", "--interactive", is_flag=True, help="then read follow-up questions from the terminal")
def ask(paths: tuple[Path, ...], question: str, model_path: str | None, window: Any, frame: Any, overlays: str,
        max_tokens: int, temperature: float, seed: int, top_p: float,
        repetition_penalty: float, vision: str, threads: int | None, device: str, images: int, as_json: bool, interactive: bool) -> None:
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
    from huatuo_cli.answering import load_model
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.engine.session import Conversation
    from huatuo_cli.errors import HuatuoError
    from huatuo_cli.inputs import inputs_from_paths
    from huatuo_cli.locate import find_bundle
    from huatuo_cli.record import answer_from_generation, build_record

    bundle = find_bundle(model_path)
    study_key, audit_id, inputs = inputs_from_paths(paths, window=window, frame=frame, images=images,
                                                    overlays=overlays)
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                        repetition_penalty=repetition_penalty, seed=seed)
    model = load_model(bundle, device=device, vision=vision, threads=threads)
    conversation = Conversation(model, images=inputs.images)
    click.echo(NOTICE, err=True)
    while True:
        stream = None if as_json else (lambda text: click.echo(text, nl=False))
        t0 = time.perf_counter()
        try:
            generation = conversation.ask(question, sampling, on_text=stream)
        except HuatuoError as exc:
            audit.record("ask", model_id=model.info.model_id, study_id=audit_id, question=question,
                         answer_chars=0, outcome="error")
            if not (interactive and conversation.turns):
                raise
            click.echo(f"Error: {exc}", err=True)  # a follow-up failed (e.g. context full); the session goes on
            question = _follow_up()
            if not question:
                break
            continue
        answer = answer_from_generation(generation)
        audit.record("ask", model_id=model.info.model_id, study_id=audit_id, question=question,
                     answer_chars=len(answer.text), outcome="ok")
        if as_json:
            record = build_record(study=study_key, question=question, answer=answer, model=model.info,
                                  inputs=inputs.inputs, window=inputs.window, total_s=time.perf_counter() - t0)
            click.echo(json.dumps(record, ensure_ascii=False, indent=None if interactive else 2))
        else:
            click.echo()
        if not interactive:
            break
        question = _follow_up()
        if not question:
            break
    model.close()


def _follow_up() -> str | None:
    """Next question from stdin; empty line, 'exit' or end of input stops."""
    try:
        text = click.prompt("follow-up (empty to stop)", default="", show_default=False, err=True)
    except (EOFError, click.Abort):
        return None
    text = text.strip()
    return None if text.lower() in ("", "exit", "quit") else text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(ask())
