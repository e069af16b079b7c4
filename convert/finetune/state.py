"""Training checkpoints in OUT/checkpoints/step-NNNNNNNN, and `--resume` from the last one.

A checkpoint holds only what changes: the adapters and projector (peft `save_pretrained`, the
same files as the final adapter), the optimizer and scheduler states, and the step. The frozen
7B base is never copied. It is written in a hidden folder and renamed into place when complete,
so a run killed while saving resumes from the previous checkpoint, never from half a one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / TRAINER_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def save_checkpoint(out: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoint `state["step"]` atomically and keep only the last `keep` checkpoints."""
    root = Path(out) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(state['step']):08d}"
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        model.save_pretrained(str(work / ADAPTER))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, work / OPTIMIZER)
        (work / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for old in checkpoint_dirs(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore adapters, projector, optimizer and scheduler; return the trainer state (step, ...)."""
    peft = require("peft")
    safetensors_torch = require("safetensors.torch")
    weights = safetensors_torch.load_file(str(folder / ADAPTER / "adapter_model.safetensors"))
    result = peft.set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
    if missing:
        raise HuatuoError(f"checkpoint {folder.name} does not fit this model: unexpected {missing[:3]}")
    saved = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return dict(json.loads((folder / TRAINER_STATE).read_text()))
