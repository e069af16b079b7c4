"""The training run: validate, build, train with accelerate, evaluate, checkpoint, save adapters.

accelerate does devices, mixed precision (bf16, else fp16 on GPUs without bf16; fp32 on the CPU),
gradient accumulation and, under `accelerate launch` or `torchrun`, data-parallel training over
several GPUs: there is no distribution code here. Only the main process writes files.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from huatuo_cli import __version__
from huatuo_cli.engine.preprocess import PreprocessConfig
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_cli.privacy import append_line, write_private
from huatuo_convert.atomic import atomic_folder, write_text_atomic
from huatuo_convert.checkpoint import QWEN_LAYOUT, LlavaCheckpoint
from huatuo_convert.finetune import state as ckpt_state
from huatuo_convert.finetune.dataset import Item, Samples, encode_file
from huatuo_convert.finetune.encode import IGNORE, collate
from huatuo_convert.finetune.model import add_lora, enable_checkpointing, load_base, tower_eval
from huatuo_convert.finetune.qwen import QwenTraining
from huatuo_convert.finetune.records import DataFile, read_data_file, report
from huatuo_convert.reference_tokenizer import load_reference_tokenizer

RUN_FILE = "finetune_run.json"  # settings, written when a run starts; --resume checks them
RESULT_FILE = "finetune.json"  # written when training finished; `merge` reads it
METRICS_FILE = "metrics.jsonl"
#: settings a resumed run must share with the run it continues
RESUME_KEYS = ("base_config_sha256", "lora_rank", "lora_alpha", "train_projector", "lora_targets", "batch_size",
               "grad_accum", "seed", "train_file")


@dataclass
class Settings:
    model: Path
    data: Path
    out: Path
    eval_data: Path | None = None
    max_steps: int | None = None
    epochs: float = 1.0
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"  # cosine or constant (both after a linear warm-up)
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    train_projector: bool = True
    batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto, bf16, fp16, fp32
    gradient_checkpointing: bool = True
    max_length: int | None = None
    save_every: int = 500
    eval_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    skip_bad: bool = False
    resume: bool = False
    description: str | None = None
    num_workers: int = 0
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"))


def precision_of(choice: str) -> str:
    """accelerate's mixed_precision: bf16 on GPUs that have it, else fp16; 'no' (fp32) on the CPU."""
    if choice == "fp32":
        return "no"
    if choice == "fp16" and not torch.cuda.is_available():
        raise HuatuoError("--precision fp16 needs a GPU; the CPU trains in fp32 (or bf16, slowly, where it has to)")
    if choice in ("bf16", "fp16"):
        return choice  # bf16 on a CPU: torch's CPU autocast, the GPU's code path (tests use it)
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def validated(path: Path, tokenizer: Any, tokens_per_image: int, max_length: int, skip_bad: bool,
              warn: Callable[[str], None], qwen: QwenTraining | None = None) -> tuple[DataFile, list[Item]]:
    """Read, check and encode a data file; refuse on problems unless skip_bad."""
    data = read_data_file(path)
    items = encode_file(data, tokenizer, tokens_per_image, max_length, qwen)
    if data.problems:
        text = report(data.problems, path.name)
        if not skip_bad:
            raise HuatuoError(f"{len(data.problems)} bad record(s) in {path.name}; nothing was trained\n{text}",
                              hint="fix them, or pass --skip-bad to train on the good records only")
        warn(f"skipping {len(data.problems)} bad record(s):\n{text}")
    if not items:
        raise HuatuoError(f"{path.name} has no usable records")
    return data, items


def train(s: Settings, *, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict[str, Any]:
    """Fine-tune and write OUT/adapter, OUT/finetune.json, OUT/metrics.jsonl; return finetune.json."""
    accelerate = require("accelerate")
    accelerator = accelerate.Accelerator(mixed_precision=precision_of(s.precision),
                                         gradient_accumulation_steps=s.grad_accum,
                                         cpu=not torch.cuda.is_available())  # torchrun on CPUs: gloo DDP
    main = accelerator.is_main_process
    say = log if main else (lambda _m: None)
    ckpt = _open_base(s.model)
    qwen = QwenTraining(ckpt) if ckpt.layout == QWEN_LAYOUT else None  # transformers' Qwen2.5-VL: its own steps
    tokenizer = qwen.tokenizer() if qwen else load_reference_tokenizer(ckpt.root)
    train_file, train_items, eval_file, eval_items = _read_data(s, ckpt, tokenizer, say, qwen)
    run = _run_record(s, ckpt, train_file, len(train_items), eval_file, len(eval_items))
    out = Path(s.out)
    _check_out(out, run, s.resume)
    accelerator.wait_for_everyone()  # every process has checked OUT before the main one writes to it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / RUN_FILE, json.dumps(run, indent=2))
    pre = (None if qwen else
           PreprocessConfig.from_dict(ckpt.preprocessor_config, pad_to_square=ckpt.config.get("image_aspect_ratio", "pad") == "pad"))
    pixels = qwen.pixels if qwen else None

    model, optimizer, scheduler, params, total, updates_per_epoch = _prepare_training(s, ckpt, accelerator, train_items, qwen)

    step = 0
    if s.resume:
        last = ckpt_state.checkpoint_dirs(out)
        if last:
            step = int(ckpt_state.load_checkpoint(last[-1], accelerator.unwrap_model(model), optimizer, scheduler)["step"])
            say(f"resuming from {last[-1].name} (step {step} of {total})")
        else:
            say("no checkpoint to resume from; starting at step 0")
    pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    loader_args: dict[str, Any] = dict(batch_size=s.batch_size, collate_fn=functools.partial(collate, pad_id=pad_id),
                                       num_workers=s.num_workers)
    eval_loader = (accelerator.prepare(torch.utils.data.DataLoader(Samples(eval_items, pre, pixels), shuffle=False, **loader_args))
                   if eval_items else None)
    metrics_path = out / METRICS_FILE
    if main and metrics_path.is_file():
        _trim_metrics(metrics_path, step)
    started = time.monotonic()
    last_loss = float("nan")
    eval_loss: float | None = None
    progress = _progress(main, total, step)
    saved = step
    stop = _StopOnSignal(enabled=accelerator.num_processes == 1)

    def save(step: int, loss: float) -> None:
        ckpt_state.save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler,
                                   {"step": step, "total_steps": total, "loss": loss}, s.keep_checkpoints)

    try:
        while step < total:
            loader = _epoch_loader(s, accelerator, Samples(train_items, pre, pixels), loader_args, step, updates_per_epoch)
            losses: list[torch.Tensor] = []
            for batch in loader:
                losses.append(_learn(accelerator, model, optimizer, scheduler, params, batch, s.max_grad_norm))
                if not accelerator.sync_gradients:
                    continue
                step += 1
                last_loss = float(accelerator.reduce(torch.stack(losses).mean(), "mean"))
                losses = []
                record = {"step": step, "epoch": round(step / updates_per_epoch, 4), "loss": last_loss,
                          "learning_rate": scheduler.get_last_lr()[0], "elapsed_s": round(time.monotonic() - started, 2)}
                if eval_loader is not None and (step % s.eval_every == 0 or step == total):
                    eval_loss = evaluate(model, eval_loader, accelerator)
                    record["eval_loss"] = eval_loss
                if main:
                    append_line(metrics_path, json.dumps(record), fsync=False)
                    progress.update(step, last_loss, eval_loss)
                if step % s.save_every == 0 or step == total:
                    accelerator.wait_for_everyone()
                    if main:
                        save(step, last_loss)
                    saved = step
                if stop.requested:
                    progress.close()
                    if step > saved:
                        save(step, last_loss)
                    say(f"interrupted: saved step-{step:08d}; continue with --resume" if step else
                        "interrupted before the first step; nothing saved")
                    raise KeyboardInterrupt
                if step >= total:
                    break
    finally:
        stop.restore()
        progress.close()
    accelerator.wait_for_everyone()
    result = {**run, "steps": step, "epochs": round(step / updates_per_epoch, 4), "eval_loss": eval_loss,
              "final_train_loss": last_loss,
              "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if main:
        _publish(out, accelerator.unwrap_model(model), result)
        say(f"trained {step} steps: loss {last_loss:.4f}" + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
            + f"; adapters in {out / ckpt_state.ADAPTER}")
    return result


def _prepare_training(s: Settings, ckpt: LlavaCheckpoint, accelerator: Any, train_items: list[Any],
                      qwen: QwenTraining | None = None) -> tuple[Any, Any, Any, list[Any], int, int]:
    """The LoRA model, its optimizer and schedule, prepared by accelerate: (model, optimizer,
    scheduler, trainable params, total optimizer steps, optimizer steps per epoch)."""
    accelerate = require("accelerate")
    base_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    torch.manual_seed(s.seed)
    if qwen:
        model = qwen.add_lora(qwen.load_base(base_dtype), rank=s.lora_rank, alpha=s.lora_alpha, dropout=s.lora_dropout,
                              train_projector=s.train_projector, linears=tuple(s.lora_targets))
    else:
        model = add_lora(load_base(ckpt, base_dtype), rank=s.lora_rank, alpha=s.lora_alpha, dropout=s.lora_dropout,
                         train_projector=s.train_projector, linears=tuple(s.lora_targets))
    if s.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    tower_eval(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    batches_per_epoch = math.ceil(len(train_items) / (s.batch_size * accelerator.num_processes))
    updates_per_epoch = math.ceil(batches_per_epoch / s.grad_accum)
    total = s.max_steps or max(1, math.ceil(s.epochs * updates_per_epoch))
    scheduler = _scheduler(s, optimizer, total)
    if accelerator.num_processes > 1 and s.train_projector and any(not i.sample.images for i in train_items):
        # a batch without images leaves the projector unused; DDP must not wait for its gradients
        accelerator.ddp_handler = accelerate.utils.DistributedDataParallelKwargs(find_unused_parameters=True)
    # the scheduler is stepped here once per optimizer step (a prepared one steps once per process)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler, params, total, updates_per_epoch


def _publish(out: Path, model: Any, result: dict[str, Any]) -> None:
    """OUT/adapter, then OUT/finetune.json, each all or nothing: `merge` reads the result as "finished"."""
    with atomic_folder(out / ckpt_state.ADAPTER, force=True) as adapter:  # a rerun's finish replaces it
        model.save_pretrained(str(adapter))
    write_text_atomic(out / RESULT_FILE, json.dumps(result, indent=2))


def _epoch_loader(s: Settings, accelerator: Any, samples: Samples, loader_args: dict[str, Any], step: int,
                  updates_per_epoch: int) -> Any:
    """The batches of the epoch `step` is in: shuffled with a seed of the epoch (a resumed run sees
    the order the interrupted one saw), the batches of the steps already done skipped."""
    generator = torch.Generator().manual_seed(s.seed * 100_003 + step // updates_per_epoch)
    loader = accelerator.prepare(torch.utils.data.DataLoader(samples, shuffle=True, generator=generator, **loader_args))
    done_in_epoch = (step % updates_per_epoch) * s.grad_accum
    return accelerator.skip_first_batches(loader, done_in_epoch) if done_in_epoch else loader


def _learn(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, params: list[Any], batch: Any,
           max_grad_norm: float | None) -> torch.Tensor:
    """One batch forward and backward; the optimizer and the schedule step when the accumulated
    gradients are synchronised. Returns the batch's loss (detached)."""
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad()
    return loss.detach()


def _open_base(model: str | Path) -> LlavaCheckpoint:
    """The base checkpoint, refused early when it cannot be fine-tuned here."""
    ckpt = LlavaCheckpoint.open(model)
    if not ckpt.has_vision:
        raise HuatuoError(f"{ckpt.hf_architecture} has no vision tower; huatuo finetune needs a HuatuoGPT-Vision checkpoint")
    if ckpt.get("model.embed_tokens.weight").dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise HuatuoError("the base weights are not 16- or 32-bit floats; LoRA is trained and merged on full-precision weights only")
    return ckpt


def _read_data(s: Settings, ckpt: LlavaCheckpoint, tokenizer: Any, say: Callable[[str], None],
               qwen: QwenTraining | None = None) -> tuple[DataFile, list[Item], DataFile | None, list[Item]]:
    """The training and (with --eval) evaluation records, validated against the base's limits."""
    vision = None if qwen else ckpt.vision.config
    tokens_per_image = (vision["image_size"] // vision["patch_size"]) ** 2 if vision else 0
    max_length = s.max_length or int(ckpt.config.get("tokenizer_model_max_length")
                                     or ckpt.config.get("max_position_embeddings", 4096))
    train_file, train_items = validated(Path(s.data), tokenizer, tokens_per_image, max_length, s.skip_bad, say, qwen)
    eval_file, eval_items = (validated(Path(s.eval_data), tokenizer, tokens_per_image, max_length, s.skip_bad, say, qwen)
                             if s.eval_data else (None, []))
    return train_file, train_items, eval_file, eval_items


def _scheduler(s: Settings, optimizer: Any, total: int) -> Any:
    """The learning-rate schedule: warm-up, then cosine decay or constant."""
    transformers = require("transformers")
    warmup = int(s.warmup_ratio * total)
    schedule = (transformers.get_cosine_schedule_with_warmup if s.lr_schedule == "cosine"
                else lambda opt, w, _t: transformers.get_constant_schedule_with_warmup(opt, w))
    return schedule(optimizer, warmup, total)


def evaluate(model: Any, loader: Any, accelerator: Any) -> float:
    """Mean loss per supervised token over the whole evaluation set (all processes)."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)
    with torch.no_grad():
        for batch in loader:
            loss = model(**batch).loss
            tokens = (batch["labels"][:, 1:] != IGNORE).sum()
            total += torch.stack([loss.float() * tokens, tokens.float()])
    model.train()
    tower_eval(accelerator.unwrap_model(model))
    total = accelerator.reduce(total, "sum")
    return float(total[0] / total[1].clamp(min=1))


def _run_record(s: Settings, ckpt: LlavaCheckpoint, train: DataFile, n_train: int, eval_: DataFile | None,
                n_eval: int) -> dict[str, Any]:
    """What the run is: the fields of huatuo_finetune.json known before training."""
    return {
        "schema": 1,
        "base_checkpoint": ckpt.root.resolve().name,
        "base_path": str(ckpt.root.resolve()),
        "base_config_sha256": ckpt.config_sha256,
        "data": {
            "train_file": train.path.name,
            "train_records": n_train,
            "eval_file": eval_.path.name if eval_ else None,
            "eval_records": n_eval if eval_ else None,
            "images": train.image_count,
            "description": s.description,
        },
        "train_file": train.path.name,
        "learning_rate": s.learning_rate,
        "lr_schedule": s.lr_schedule,
        "lora_rank": s.lora_rank,
        "lora_alpha": s.lora_alpha,
        "lora_targets": list(s.lora_targets),
        "train_projector": s.train_projector,
        "batch_size": s.batch_size,
        "grad_accum": s.grad_accum,
        "seed": s.seed,
        "huatuo_version": __version__,
    }


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the lines of steps after `step`: a killed run logged them, the resumed run redoes them."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of a killed run
    write_private(path, "".join(kept))


def _check_out(out: Path, run: dict[str, Any], resume: bool) -> None:
    """OUT is new, or (with --resume) a run with the same settings."""
    previous = out / RUN_FILE
    if previous.is_file():
        if not resume:
            raise HuatuoError(f"{out} already holds a fine-tuning run", hint="pass --resume to continue it, or choose another --out")
        old = json.loads(previous.read_text())
        changed = [k for k in RESUME_KEYS if old.get(k) != run.get(k)]
        if changed:
            raise HuatuoError(f"--resume with different settings than the run in {out}: {', '.join(changed)}")
    elif out.exists() and any(out.iterdir()):
        raise HuatuoError(f"{out} exists and is not a fine-tuning run folder")


class _StopOnSignal:
    """Ctrl-C (SIGINT) in a single-process run: finish the current step, save it, then stop.

    A second Ctrl-C interrupts at once. Under a launcher every rank gets the signal at a different
    point, so there the signal keeps its default behaviour (resume from the last --save-every).
    """

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.previous: Any = None
        if enabled and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        self.requested = True
        self.restore()

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class _progress:
    """A rich progress bar on stderr (main process only)."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("finetune"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), console=Console(stderr=True))
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float, eval_loss: float | None) -> None:
        if self.bar is not None:
            info = f"loss {loss:.4f}" + (f" eval {eval_loss:.4f}" if eval_loss is not None else "")
            self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
