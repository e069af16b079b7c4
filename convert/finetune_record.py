"""`huatuo_finetune.json`: what `huatuo finetune` records in a merged checkpoint, read and checked.

The fine-tuning command writes this file next to the merged weights. `huatuo convert all` reads it
to derive the bundle's model card from the base card: the training data, steps and evaluation loss
belong in the card a radiologist reads, and the base model's benchmark figures no longer describe
the fine-tuned weights. A malformed file stops the conversion with the field named, before hours of
conversion work: a card built from a half-read record would misstate what the model is.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError

FINETUNE_NAME = "huatuo_finetune.json"
SCHEMA = 1

#: field -> (accepted types, may be null); `bool` is never accepted where a number is expected
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((int,), False),
    "base_checkpoint": ((str,), False),
    "base_config_sha256": ((str,), False),
    "data": ((dict,), False),
    "steps": ((int,), False),
    "epochs": ((int, float), False),
    "learning_rate": ((int, float), False),
    "lora_rank": ((int,), False),
    "lora_alpha": ((int,), False),
    "train_projector": ((bool,), False),
    "eval_loss": ((int, float), True),
    "final_train_loss": ((int, float), False),
    "finished_at": ((str,), False),
    "huatuo_version": ((str,), False),
}
_DATA_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "train_file": ((str,), False),
    "train_records": ((int,), False),
    "eval_file": ((str,), True),
    "eval_records": ((int,), True),
    "images": ((int,), False),
    "description": ((str,), True),
}
_COUNTS = ("steps", "lora_rank", "lora_alpha", "train_records", "eval_records", "images")


@dataclass(frozen=True)
class FinetuneRecord:
    """The validated record; `raw` keeps the file's own fields for the card."""

    path: Path
    raw: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.raw["data"])

    @property
    def steps(self) -> int:
        return int(self.raw["steps"])

    @property
    def eval_loss(self) -> float | None:
        value = self.raw["eval_loss"]
        return None if value is None else float(value)


def _check(where: str, record: dict[str, Any], fields: dict[str, tuple[tuple[type, ...], bool]]) -> None:
    for name, (types, nullable) in fields.items():
        if name not in record:
            raise HuatuoError(f"{where}: field '{name}' is missing")
        value = record[name]
        if value is None:
            if nullable:
                continue
            raise HuatuoError(f"{where}: field '{name}' must not be null")
        if isinstance(value, bool) and bool not in types:
            raise HuatuoError(f"{where}: field '{name}' must be {_names(types)}, not a boolean")
        if not isinstance(value, types):
            raise HuatuoError(f"{where}: field '{name}' must be {_names(types)}, got {type(value).__name__}")
        if name in _COUNTS and isinstance(value, int) and value < 0:
            raise HuatuoError(f"{where}: field '{name}' must not be negative ({value})")


def _names(types: tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}
    return " or ".join(dict.fromkeys(words[t] for t in types))


def read_finetune_record(folder: Path) -> FinetuneRecord | None:
    """The checkpoint's fine-tuning record, validated; None when the folder has none."""
    path = Path(folder) / FINETUNE_NAME
    if not path.is_file():
        return None
    hint = f"{FINETUNE_NAME} is written by `huatuo finetune`; re-run its merge step rather than edit the file"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HuatuoError(f"{path} is not valid JSON ({exc})", hint=hint) from exc
    if not isinstance(raw, dict):
        raise HuatuoError(f"{path} must hold a JSON object", hint=hint)
    if raw.get("schema") != SCHEMA:
        raise HuatuoError(f"{path}: schema {raw.get('schema')!r} is not one this huatuo reads ({SCHEMA})",
                          hint="upgrade huatuo-cli, or re-run the merge with this version")
    try:
        _check(str(path), raw, _FIELDS)
        _check(f"{path}: data", raw["data"], _DATA_FIELDS)
        try:
            dt.datetime.fromisoformat(raw["finished_at"])
        except ValueError:
            raise HuatuoError(f"{path}: field 'finished_at' is not an ISO-8601 time ({raw['finished_at']!r})") from None
    except HuatuoError as exc:
        raise HuatuoError(exc.args[0], hint=hint) from None
    return FinetuneRecord(path=path, raw=raw)
