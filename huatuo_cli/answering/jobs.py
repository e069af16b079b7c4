"""The data that flows between `inputs` (paths -> images), `answering` (the engine) and the batch
loop: kept in a module of its own so that `ask` and the engine side never import the batch loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from PIL import Image

from huatuo_cli.answering.record import Answer
from huatuo_cli.errors import HuatuoError

if TYPE_CHECKING:
    import numpy as np

    from huatuo_cli.engine.session import ModelInfo
    from huatuo_cli.imaging.load import ImageMeta

#: answer(images, question, study_id): made once per batch, the boundary the loop knows the engine by.
#: It checks the question and audits the answer under `study_id` (`AnswerService.study_answerer`).
AnswerFn = Callable[[list[Image.Image], str, "str | None"], Answer]
#: what records and the audit log say about the model: the engine's ModelInfo, or a plain mapping
#: (test doubles, benchmarks)
ModelRef = Union["ModelInfo", Mapping[str, Any]]


@dataclass
class StudyInputs:
    """A study's decoded images, ready for the model."""

    images: list[Image.Image]          # PIL RGB images, in the order the model sees them
    inputs: list[str]                  # content hashes of the input files
    window: str | None = None          # the window actually applied (preset name or "C/W")
    metas: list[ImageMeta] = field(default_factory=list)  # per image: PHI-free facts, caveats
    overlays: list[np.ndarray | None] = field(default_factory=list)  # overlay mask per image (thumbnails draw them)


class FileFailure(HuatuoError):
    """A study failed because of one of its files: `path` names it in errors.jsonl (owner-only;
    the reports show only the study key, since folder names often name the patient)."""

    def __init__(self, cause: HuatuoError, path: Path) -> None:
        super().__init__(cause.args[0] if cause.args else str(cause), hint=cause.hint)
        self.path = path
        self.category: str | None = getattr(cause, "category", None)


class DecoderCrash(HuatuoError):
    """Decoding a study killed the process that tried it (a native decoder's segfault or abort)."""


@dataclass
class Job:
    """One unit of a batch: a study (or a series with --per series)."""

    key: str                           # PHI-free and stable across runs: the resume key
    load: Callable[[], StudyInputs]    # decodes the images; may raise for a bad study
    series: str | None = None
    sources: list[Path] = field(default_factory=list)  # DICOM files behind the images (SR references)
    audit_id: str | None = None        # identifier the audit log hashes (e.g. StudyInstanceUID)
    #: 0-based frames of each source the model sees (the SR references them by frame number)
    frames: dict[Path, tuple[int, ...]] = field(default_factory=dict)
    study: str | None = None           # the study key when `key` is a series (--per series): one SR per study

    @property
    def study_key(self) -> str:
        return self.study or self.key


@dataclass
class BadFile:
    """A file the scan could not use. `key` is its path relative to the batch folder."""

    key: str
    reason: str
