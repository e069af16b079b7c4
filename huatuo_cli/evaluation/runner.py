"""The resumable evaluation loop: one fsynced JSON line per answered item (`privacy.append_line`, read
back with `jsonl.read_jsonl`), so after Ctrl-C, a crash or `kill -9` a rerun answers exactly the items
not yet saved. One run at a time per output file (flock)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from huatuo_cli.errors import HuatuoError
from huatuo_cli.evaluation.data import EvalSet, Item
from huatuo_cli.evaluation.scorer import score_line
from huatuo_cli.jsonl import read_jsonl
from huatuo_cli.privacy import append_line, exclusive, scrub

SCHEMA = "huatuo.eval/1"
ITEMS_DAMAGED_HINT = "the file was edited or damaged; use a new --out folder"
#: answer(item) -> the model's response text
Answerer = Callable[[Item], str]


def locked(path: Path) -> AbstractContextManager[None]:
    """Hold `path`'s lock file: two runs appending the same items would double them (`privacy.exclusive`)."""
    return exclusive(path.with_name(path.name + ".lock"), HuatuoError(
        f"another huatuo eval is writing {path.name}",
        hint="wait for it to finish, or give this run another --out folder"))


def saved_lines(path: Path, *, model_sha256: str | None = None, data_sha256: str | None = None) -> list[dict[str, Any]]:
    """The lines already saved (a torn last line repaired away); refused when they came from another
    model or another data file than this run's."""
    lines = read_jsonl(path, repair=True, hint=ITEMS_DAMAGED_HINT)
    for line in lines[:1]:
        if model_sha256 and line.get("model", {}).get("sha256") != model_sha256:
            raise HuatuoError(f"{path.name} holds answers of another model ({line.get('model', {}).get('name')})",
                              hint="use a new --out folder for another bundle")
        if data_sha256 and line.get("data_sha256") != data_sha256:
            raise HuatuoError(f"{path.name} holds answers to another version of the data file",
                              hint="use a new --out folder")
    return lines


@dataclass
class Outcome:
    lines: list[dict[str, Any]]   # every saved line of the items asked for, in item order
    answered: int = 0             # in this run
    skipped: int = 0              # saved by an earlier run
    failed: int = 0               # items that could not be answered (errors.jsonl); retried by a rerun
    interrupted: bool = False


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(eval_set: EvalSet, out_file: Path, answer: Answerer, *, model: dict[str, str], label: str = "",
        stream: TextIO | None = None) -> Outcome:
    """Answer every item of `eval_set` not yet in `out_file`, appending one scored line each."""
    stream = stream or sys.stderr
    errors_file = out_file.with_name(out_file.stem + ".errors.jsonl")
    with locked(out_file):
        saved = saved_lines(out_file, model_sha256=model.get("sha256"), data_sha256=eval_set.sha256)
        by_id = {line["id"]: line for line in saved}
        pending = [item for item in eval_set.items if item.id not in by_id]
        outcome = Outcome(lines=[], skipped=len(eval_set.items) - len(pending))
        total, t0 = len(pending), time.monotonic()
        try:
            for done, item in enumerate(pending, 1):
                try:
                    response = answer(item)
                except HuatuoError as exc:
                    outcome.failed += 1
                    append_line(errors_file, _json({"id": item.id, "dataset": item.dataset, "reason": str(exc)}))
                    print(f"[{done}/{total}] {label}{item.dataset} {item.id}: failed: {exc}", file=stream, flush=True)
                    continue
                except Exception as exc:  # noqa: BLE001 - a decoder bug on one odd file never ends the run
                    outcome.failed += 1
                    reason = f"{type(exc).__name__}: {scrub(str(exc))}"[:500]
                    append_line(errors_file, _json({"id": item.id, "dataset": item.dataset, "reason": reason}))
                    print(f"[{done}/{total}] {label}{item.dataset} {item.id}: failed: {reason}", file=stream, flush=True)
                    continue
                line = score_line({"schema": SCHEMA, "id": item.id, "dataset": item.dataset, "subset": item.subset,
                                   "question": item.question, "options": item.options, "answer": item.answer,
                                   "response": response, "model": model, "data_sha256": eval_set.sha256})
                append_line(out_file, _json(line))
                by_id[item.id] = line
                outcome.answered += 1
                left = (time.monotonic() - t0) / done * (total - done)
                mark = "right" if line["correct"] else "wrong"
                print(f"[{done}/{total}] {label}{item.dataset} {item.id}: {line['choice']} ({mark}), ETA {_eta(left)}",
                      file=stream, flush=True)
        except KeyboardInterrupt:
            outcome.interrupted = True
        outcome.lines = [by_id[item.id] for item in eval_set.items if item.id in by_id]
        return outcome


def _json(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, ensure_ascii=False)
