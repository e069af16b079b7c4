"""`huatuo finetune ...` (server side; needs the `convert` and `train` extras).

Imports nothing heavy at module level so that `huatuo finetune --help` works anywhere; the
training code (torch, peft, accelerate) is imported when a command runs, through
`huatuo_cli.extras.require`, which names the extra to install when one is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from huatuo_cli.extras import require


@click.group(invoke_without_command=True)
@click.option("--model", "model", type=click.Path(path_type=Path, exists=True, file_okay=False), metavar="HF_DIR",
              help="HuatuoGPT-Vision checkpoint folder (bf16/fp16/fp32 safetensors, never a quantized copy).")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), metavar="TRAIN.jsonl",
              help="LLaVA / PubMedVision records, one JSON object per line; image paths relative to this file.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path, dir_okay=False), metavar="EVAL.jsonl",
              help="Records for the evaluation loss (same format).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), metavar="OUT",
              help="Run folder: adapter/, checkpoints/, metrics.jsonl, finetune.json.")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), default=2e-4, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
              help="After a linear warm-up of --warmup-ratio of the steps.")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.03, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--lora-rank", type=click.IntRange(1), default=16, show_default=True)
@click.option("--lora-alpha", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True)
@click.option("--train-projector/--freeze-projector", default=True, show_default=True,
              help="Train the mm projector in full (saved with the adapters and merged).")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True, help="Per device.")
@click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 on GPUs that have it, else fp16; fp32 on the CPU (bf16 there: slow CPU autocast).")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=True, show_default=True)
@click.option("--max-length", type=click.IntRange(16), default=None,
              help="Longest sample in positions, images included [default: the model's context].")
@click.option("--save-every", type=click.IntRange(1), default=500, show_default=True, help="Checkpoint every N steps.")
@click.option("--eval-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--keep-checkpoints", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", "num_workers", type=click.IntRange(0), default=0, show_default=True,
              help="DataLoader worker processes (image decoding).")
@click.option("--skip-bad", is_flag=True, help="Train on the good records when some are bad (they are listed).")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option("--data-description", "description", default=None,
              help="One line about the data, kept in huatuo_finetune.json (model cards).")
@click.option("--merge", "merge_to", type=click.Path(path_type=Path), default=None, metavar="MERGED",
              help="After training, write the merged checkpoint to MERGED (as `huatuo finetune merge`).")
@click.pass_context
def finetune(ctx: click.Context, /, model: Path | None, data: Path | None, out: Path | None, merge_to: Path | None,
             **options: Any) -> None:
    """Fine-tune HuatuoGPT-Vision with LoRA on your own image + answer records (server side).

    Data is validated before training (line numbers; nothing trains on errors unless --skip-bad).
    Loss is on the answers only, with the prompt the workstation uses. Several GPUs: start the same
    command with `accelerate launch` or `torchrun` (README "Fine-tuning").

    \b
    Examples:
      huatuo finetune --model /models/HuatuoGPT-Vision-7B --data train.jsonl --eval eval.jsonl \\
          --out /runs/ft1 --epochs 2 --merge /models/HuatuoGPT-Vision-7B-ft1
      huatuo finetune --model /models/HuatuoGPT-Vision-7B --data train.jsonl --out /runs/ft1 --resume
      huatuo finetune merge /runs/ft1 /models/HuatuoGPT-Vision-7B-ft1
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [name for name, value in (("--model", model), ("--data", data), ("--out", out)) if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use `huatuo finetune merge OUT MERGED`)")
    if merge_to is not None and merge_to.exists():  # found now, not after hours of training (finetune has no --force)
        raise click.UsageError(f"--merge {merge_to} already exists; give a new folder "
                               "(`huatuo finetune merge OUT MERGED --force` replaces one after training)")
    require("peft"), require("accelerate")  # say which extra is missing before any work
    from huatuo_convert.finetune.loop import Settings, train

    assert model is not None and data is not None and out is not None
    train(Settings(model=model, data=data, out=out, **options), log=lambda m: click.echo(m, err=True))
    if merge_to is not None:
        _merge(out, merge_to, None, False)


@finetune.command()
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("merged", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None, metavar="HF_DIR",
              help="The base checkpoint, if it moved since training (its config.json must be the same).")
@click.option("--force", is_flag=True, help="Replace MERGED if it exists.")
def merge(out: Path, merged: Path, model: Path | None, force: bool) -> None:
    """Merge the run in OUT into a full checkpoint MERGED that `huatuo convert all` takes.

    \b
    Example:
      huatuo finetune merge /runs/ft1 /models/HuatuoGPT-Vision-7B-ft1
      huatuo convert all /models/HuatuoGPT-Vision-7B-ft1 /bundles/huatuo-7b-ft1-q4_k_m --quant q4_k_m
    """
    _merge(out, merged, model, force)


def _merge(out: Path, merged: Path, model: Path | None, force: bool) -> None:
    require("peft")
    from huatuo_convert.finetune.merge import merge_run

    merge_run(out, merged, base=model, force=force, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote merged checkpoint {merged}")
