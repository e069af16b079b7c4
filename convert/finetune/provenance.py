"""`huatuo_finetune.json`: what a merged checkpoint was trained from, for model cards and audits.

Schema 1 (docs/finetune.md): base checkpoint name and config hash, data files (names only, no
paths: folder names can carry patient or project names), record and image counts, the
description given with `--data-description`, steps, epochs, learning rate, LoRA rank and alpha,
whether the projector was trained, final losses, the merge check, finish time and huatuo
version. `huatuo convert all` ignores the file; it travels with the checkpoint.
"""

from __future__ import annotations

from typing import Any

PROVENANCE_FILE = "huatuo_finetune.json"
SCHEMA = 1
#: keys of the training result copied as they are
FIELDS = ("base_checkpoint", "base_config_sha256", "data", "steps", "epochs", "learning_rate", "lr_schedule",
          "lora_rank", "lora_alpha", "lora_targets", "train_projector", "eval_loss", "final_train_loss",
          "finished_at", "huatuo_version")


def provenance(result: dict[str, Any], merge_check: dict[str, Any]) -> dict[str, Any]:
    """The file's content from a run's finetune.json and the merge check figures."""
    record: dict[str, Any] = {"schema": SCHEMA}
    record.update({key: result.get(key) for key in FIELDS})
    record["merge_check"] = merge_check
    return record
