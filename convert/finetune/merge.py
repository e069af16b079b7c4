"""`huatuo finetune merge OUT MERGED`: adapters + projector merged into a full checkpoint.

The base is loaded in float32 from its stored 16-bit weights (never from a quantized copy), peft's
`merge_and_unload` adds the LoRA deltas there and swaps in the trained projector, and every tensor
is written back in the base's own dtype, names and shard files; config, tokenizer, preprocessor
and the vision tower (embedded tensors or CLIP folder) are copied unchanged. The result is what
`huatuo convert all` takes. Before MERGED gets its name, the merged checkpoint is reloaded the way
the converter's reference loads it and its logits on a fixed image + prompt are compared with the
trained (unmerged) model's: top-1 must agree wherever the answer is not a near-tie.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_cli.engine.prompt import Turn
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.atomic import refuse_existing
from huatuo_convert.checkpoint import EMBEDDED_TOWER_PREFIX, PROJECTOR_PREFIX, QWEN_LAYOUT, LlavaCheckpoint, PickleTensorFiles
from huatuo_convert.finetune.encode import prompt_ids
from huatuo_convert.finetune.loop import RESULT_FILE
from huatuo_convert.finetune.model import LLM_PREFIX, PROJECTOR, load_base
from huatuo_convert.finetune.provenance import PROVENANCE_FILE, provenance
from huatuo_convert.finetune.qwen import QwenTraining
from huatuo_convert.finetune.state import ADAPTER
from huatuo_convert.reference_tokenizer import load_reference_tokenizer

#: the question of the merge check (the bundle's end-to-end question, so figures compare)
PROBE_QUESTION = "Is there a pleural effusion?"
#: max |delta logit| / max |logit| allowed between trained and merged, by the base's stored dtype
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def merge_run(run_dir: Path, merged: Path, *, base: Path | None = None, force: bool = False,
              log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Write MERGED from the finished run in `run_dir`; return its huatuo_finetune.json."""
    peft = require("peft")
    run_dir, merged = Path(run_dir), Path(merged)
    result_path = run_dir / RESULT_FILE
    if not result_path.is_file():
        raise HuatuoError(f"{run_dir} holds no finished fine-tuning run (no {RESULT_FILE})",
                          hint="run `huatuo finetune ... --out OUT` to the end first "
                               "(`huatuo finetune ... --out OUT --resume` continues a stopped run)")
    result = json.loads(result_path.read_text())
    refuse_existing(merged, force=force)
    if not merged.parent.is_dir():
        raise HuatuoError(f"folder {merged.parent} does not exist")
    ckpt = LlavaCheckpoint.open(base or result["base_path"])
    if ckpt.config_sha256 != result["base_config_sha256"]:
        raise HuatuoError(f"{ckpt.root} is not the checkpoint this run was trained on (config.json differs)",
                          hint="pass the original base with --model")
    if isinstance(ckpt.tensors, PickleTensorFiles):
        raise HuatuoError("the base holds pickle weights; convert it to safetensors before fine-tuning")
    log(f"merging {run_dir / ADAPTER} into {ckpt.root.name} (float32, written back in the base's dtype)")
    qwen = QwenTraining(ckpt) if ckpt.layout == QWEN_LAYOUT else None  # transformers' Qwen2.5-VL: its own steps
    base_model = qwen.load_base(torch.float32) if qwen else load_base(ckpt, torch.float32)
    trained = peft.PeftModel.from_pretrained(base_model, str(run_dir / ADAPTER)).eval()
    probe = qwen.probe() if qwen else _probe(ckpt)
    with torch.no_grad():
        trained_logits = trained(**probe).logits[0].float()
    state = dict(trained.merge_and_unload().state_dict())
    work = Path(tempfile.mkdtemp(prefix=f".{merged.name}.", suffix=".partial", dir=merged.parent))
    try:
        work.chmod(ckpt.root.stat().st_mode & 0o777)
        _copy_layout(ckpt.root, work)
        _write_weights(ckpt, state, work, qwen.checkpoint_name if qwen else checkpoint_name)
        del trained, state  # one float32 model in memory at a time: the merged one is loaded next
        gc.collect()
        check = compare(trained_logits, _merged_logits(work, probe, qwen is not None), _stored_dtype(ckpt))
        log(f"merge check: top-1 {check['top1_agreement']:.2%} at {check['decisive_positions']} decisive positions, "
            f"max |dlogit| {check['max_abs_logit_delta']:.3g} ({check['max_rel_logit_delta']:.2g} of max |logit|)")
        if not check["passed"]:
            raise HuatuoError("the merged checkpoint does not reproduce the trained model "
                              f"(top-1 {check['top1_agreement']:.2%}, relative logit delta {check['max_rel_logit_delta']:.3g})",
                              hint="this is a merge bug; please report it with these figures")
        record = provenance(result, check)
        (work / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
        if merged.exists():
            shutil.rmtree(merged) if merged.is_dir() else merged.unlink()
        os.replace(work, merged)
        return record
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _stored_dtype(ckpt: LlavaCheckpoint) -> torch.dtype:
    dtype: torch.dtype = ckpt.get("model.embed_tokens.weight").dtype
    return dtype


def _copy_layout(base: Path, work: Path) -> None:
    """Everything of the base but its main weight files (rewritten) and an older provenance file."""
    for entry in base.iterdir():
        if entry.suffix == ".safetensors" or entry.name == PROVENANCE_FILE:
            continue
        if entry.is_dir():
            shutil.copytree(entry, work / entry.name, symlinks=False)
        else:
            shutil.copy2(entry, work / entry.name)


def checkpoint_name(state_name: str) -> str | None:
    """Name in the checkpoint of a LlavaForTraining state-dict entry (None for the tower)."""
    if state_name.startswith(LLM_PREFIX):
        return state_name.removeprefix(LLM_PREFIX)
    if state_name.startswith(PROJECTOR + "."):
        return PROJECTOR_PREFIX + state_name.removeprefix(PROJECTOR + ".")
    return None


def _write_weights(ckpt: LlavaCheckpoint, state: dict[str, Any], work: Path,
                   name_of: Callable[[str], str | None] = checkpoint_name) -> None:
    """The base's shard files with the same names, order and dtypes; LLM and projector merged.
    `name_of`: a trained model's state-dict name -> the checkpoint's (view) name, None where not stored."""
    save_file = require("safetensors.torch").save_file
    merged = {name: tensor for key, tensor in state.items() if (name := name_of(key)) is not None}
    stored_as = getattr(ckpt.tensors, "stored", {})  # a renamed view (Qwen2.5-VL): files keep their own names
    by_file: dict[Path, list[str]] = {}
    for name, path in ckpt.tensors.files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        if path.parent.resolve() != ckpt.root.resolve():
            continue  # a CLIP folder: copied verbatim with the layout
        tensors = {}
        for name in names:
            stored = ckpt.get(name)
            if name.startswith(EMBEDDED_TOWER_PREFIX):
                tensors[name] = stored.contiguous()
            elif name in merged:
                tensors[stored_as.get(name, name)] = merged[name].detach().to(stored.dtype).contiguous()
            else:
                raise HuatuoError(f"tensor {name} of the base has no counterpart in the trained model")
        save_file(tensors, str(work / path.name), metadata={"format": "pt"})


def _probe(ckpt: LlavaCheckpoint) -> dict[str, Any]:
    """A fixed image + question, as LlavaForTraining inputs."""
    from huatuo_convert.onnx_validate import validation_images

    vision = ckpt.vision.config
    tokenizer = load_reference_tokenizer(ckpt.root)
    ids = prompt_ids(tokenizer, [Turn(PROBE_QUESTION, images=1)], (vision["image_size"] // vision["patch_size"]) ** 2)
    config = PreprocessConfig.from_dict(ckpt.preprocessor_config)
    image = validation_images(vision["image_size"])[1][1]
    return {"input_ids": torch.tensor([ids]), "pixel_values": torch.from_numpy(preprocess([image], config))}


def _merged_logits(folder: Path, probe: dict[str, Any], qwen: bool = False) -> torch.Tensor:
    ckpt = LlavaCheckpoint.open(folder)
    model = (QwenTraining(ckpt).load_base(torch.float32) if qwen else load_base(ckpt, torch.float32)).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(**probe).logits[0].float()
    return logits


def compare(trained: torch.Tensor, merged: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
    """Logit parity at every position; top-1 judged where the margin exceeds twice the max delta."""
    delta = (trained - merged).abs()
    max_delta = float(delta.max())
    top2 = trained.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * max_delta
    agree = trained.argmax(-1) == merged.argmax(-1)
    n = int(decisive.sum())
    top1 = float(agree[decisive].float().mean()) if n else 1.0
    rel = max_delta / float(trained.abs().max())
    return {"positions": int(trained.shape[0]), "decisive_positions": n, "top1_agreement": top1,
            "max_abs_logit_delta": max_delta, "max_rel_logit_delta": rel,
            "tolerance": TOLERANCE[dtype], "passed": top1 == 1.0 and rel <= TOLERANCE[dtype]}
