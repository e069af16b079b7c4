"""Read and validate LLaVA / PubMedVision conversation records (one JSON object per line).

A record is what LLaVA's and PubMedVision's training files hold:

    {"id": "x1", "image": "img/cxr1.png",            # or "images": [...]; relative to the data file
     "window": "lung",                                # optional, DICOM only (default auto)
     "conversations": [{"from": "human", "value": "<image>\\nIs there an effusion?"},
                       {"from": "gpt", "value": "A small left pleural effusion."}]}

Every problem is found before training starts and reported with its line number, so a night of
GPU time is not lost to line 90 211. Images are opened here with huatuo's own imaging (DICOM
rendered as the workstation renders it), so an unreadable file is a validation error, not a crash
half-way through an epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo_cli.engine.prompt import IMAGE_PLACEHOLDER, MAX_IMAGES, Turn, moderate
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging import load_image

HUMAN, GPT = "human", "gpt"
#: how many problems are listed before "... and N more"
MAX_LISTED = 20


@dataclass(frozen=True)
class Sample:
    """One valid record: its images (absolute paths), the DICOM window, and the answered turns."""

    line: int
    images: tuple[Path, ...]
    window: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Problem:
    """Why one line cannot be trained on."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class DataFile:
    """The valid samples of a data file and the problems of the others."""

    path: Path
    samples: list[Sample]
    problems: list[Problem]

    @property
    def image_count(self) -> int:
        return len({p for s in self.samples for p in s.images})


def parse_record(raw: Any, base: Path, line: int) -> Sample:
    """A Sample from one decoded JSON value; HuatuoError naming the first problem otherwise."""
    if not isinstance(raw, dict):
        raise HuatuoError("not a JSON object")
    images = _image_paths(raw, base)
    window = raw.get("window", "auto")
    if not isinstance(window, str):
        raise HuatuoError("'window' must be a string such as \"lung\" or \"40,400\"")
    turns = _turns(raw.get("conversations"), len(images))
    return Sample(line=line, images=tuple(images), window=window, turns=tuple(turns))


def _image_paths(raw: dict[str, Any], base: Path) -> list[Path]:
    if "image" in raw and "images" in raw:
        raise HuatuoError("both 'image' and 'images' given; use one")
    value = raw.get("images", raw.get("image", []))
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise HuatuoError("'image' must be a path and 'images' a list of paths")
    if len(names) > MAX_IMAGES:
        raise HuatuoError(f"{len(names)} images; HuatuoGPT-Vision takes at most {MAX_IMAGES}")
    return [(base / name) for name in names]


def _turns(conversations: Any, n_images: int) -> list[Turn]:
    """Alternating human/gpt pairs -> Turns; `<image>` markers say which turn shows the images."""
    if not isinstance(conversations, list) or not conversations:
        raise HuatuoError("'conversations' must be a non-empty list")
    if len(conversations) % 2:
        raise HuatuoError(f"{len(conversations)} turns: conversations must be human/gpt pairs")
    turns: list[Turn] = []
    markers: list[int] = []
    for i in range(0, len(conversations), 2):
        human, gpt = conversations[i], conversations[i + 1]
        for j, (turn, role) in enumerate(((human, HUMAN), (gpt, GPT))):
            if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
                got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
                raise HuatuoError(f"turn {i + j + 1} is {got!r}; expected a {role!r} turn with a string 'value' "
                                  "(turns must alternate human, gpt)")
        if IMAGE_PLACEHOLDER in gpt["value"]:
            raise HuatuoError(f"turn {i + 2}: an answer holds an {IMAGE_PLACEHOLDER} marker")
        answer = gpt["value"].strip()
        question = moderate(human["value"])
        if not answer:
            raise HuatuoError(f"turn {i + 2}: empty answer")
        if not question:
            raise HuatuoError(f"turn {i + 1}: empty question")
        markers.append(human["value"].count(IMAGE_PLACEHOLDER))
        turns.append(Turn(question=question, answer=answer))
    if sum(markers) == 0 and n_images:
        markers[0] = n_images  # LLaVA data without markers: the images belong to the first question
    if sum(markers) != n_images:
        raise HuatuoError(f"{sum(markers)} {IMAGE_PLACEHOLDER} markers for {n_images} images")
    return [Turn(question=t.question, images=m, answer=t.answer) for t, m in zip(turns, markers, strict=True)]


def check_images(sample: Sample) -> None:
    """Open every image as training will (DICOM rendered with the record's window)."""
    for path in sample.images:
        if not path.is_file():
            raise HuatuoError(f"image {path.name} not found (looked beside the data file)")
        try:
            load_image(path, window=sample.window)
        except HuatuoError as exc:
            raise HuatuoError(f"image {path.name} is unreadable: {exc}") from exc


def read_data_file(path: Path) -> DataFile:
    """Every line of a JSON-lines file parsed and its images opened; problems collected, not raised."""
    path = Path(path)
    if not path.is_file():
        raise HuatuoError(f"data file {path} not found")
    samples: list[Sample] = []
    problems: list[Problem] = []
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as exc:
            raise HuatuoError(f"{path.name} is not UTF-8 text ({exc.reason})") from exc
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, f"malformed JSON ({exc.msg}, column {exc.colno})"))
            continue
        try:
            sample = parse_record(raw, path.parent, number)
            check_images(sample)
        except HuatuoError as exc:
            problems.append(Problem(number, str(exc)))
            continue
        samples.append(sample)
    return DataFile(path=path, samples=samples, problems=problems)


def report(problems: list[Problem], name: str) -> str:
    """The problems of a file as lines, the first MAX_LISTED of them."""
    lines = [f"{name}: {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"{name}: ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)
