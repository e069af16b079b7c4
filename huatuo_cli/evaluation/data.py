"""Evaluation items in the official layout (`Medical_Multimodal_Evaluation_Data`: one JSON list and an
`images/` folder beside it) or the same records as JSON lines: `question`, `options` (list), `answer`
(the correct option's text), `image` (a path or a list of paths relative to the file's folder: pictures,
DICOM files or series folders), `dataset`; optional `id`, `subset`, `question_type`, `window` (a
DICOM window for this item). Items with `question_type == "open"` or without options are not scored."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.evaluation.scorer import LETTERS, answer_letter, prompt


@dataclass(frozen=True)
class Item:
    id: str
    dataset: str
    question: str
    options: list[str]
    answer: str
    letter: str
    images: list[Path]
    subset: str | None = None
    window: str | None = None

    @property
    def prompt(self) -> str:
        return prompt(self.question, self.options)


@dataclass
class EvalSet:
    path: Path
    sha256: str
    items: list[Item]
    #: reason -> count of records not scored (open questions, no options, answer not among options)
    skipped: Counter[str] = field(default_factory=Counter)


def _records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise HuatuoError(f"{path.name} is not JSON lines ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise HuatuoError(f"{path.name} is not JSON ({exc})", hint="give the evaluation JSON (a list of items) "
                          "or a .jsonl file") from None
    if not isinstance(data, list):
        raise HuatuoError(f"{path.name} holds no list of items")
    return data


def load_set(path: Path, *, datasets: tuple[str, ...] = (), limit: int | None = None) -> EvalSet:
    """The scored items of `path`, in file order; `datasets` keeps only those; `limit` the first N per
    data set (a quick look that still covers every data set)."""
    path = Path(path)
    records = _records(path)
    skipped: Counter[str] = Counter()
    items: list[Item] = []
    per: Counter[str] = Counter()
    wanted = {d.lower() for d in datasets}
    for index, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise HuatuoError(f"{path.name}: item {index + 1} is not an object")
        dataset = str(rec.get("dataset") or "unknown")
        if wanted and dataset.lower() not in wanted:
            continue
        options = rec.get("options")
        if rec.get("question_type") == "open":
            skipped["open question"] += 1
            continue
        if not isinstance(options, list) or not options:
            skipped["no options"] += 1
            continue
        if len(options) > len(LETTERS):
            skipped[f"more than {len(LETTERS)} options"] += 1
            continue
        for key in ("question", "answer"):
            if not isinstance(rec.get(key), str):
                raise HuatuoError(f"{path.name}: item {index + 1} has no '{key}' text")
        options = [str(o) for o in options]
        letter = answer_letter(rec["answer"], options)
        if letter is None:
            skipped["answer not among the options"] += 1
            continue
        if limit is not None and per[dataset] >= limit:
            continue
        per[dataset] += 1
        image = rec.get("image") or rec.get("images") or []
        names = [image] if isinstance(image, str) else list(image)
        items.append(Item(id=str(rec.get("id", index)), dataset=dataset, question=rec["question"], options=options,
                          answer=rec["answer"], letter=letter, images=[path.parent / str(n) for n in names],
                          subset=rec.get("subset"), window=rec.get("window")))
    ids = Counter(item.id for item in items)
    twice = [i for i, n in ids.items() if n > 1]
    if twice:
        raise HuatuoError(f"{path.name}: item id {twice[0]!r} appears {ids[twice[0]]} times",
                          hint="every item needs its own id (or none: the position in the file is used)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return EvalSet(path=path, sha256=digest, items=items, skipped=skipped)
