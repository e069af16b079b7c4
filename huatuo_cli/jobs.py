"""The data that flows between `inputs` (paths -> images), `answering` (the engine) and the batch
loop: kept in a module of its own so that `ask` and the engine side never import the batch loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from PIL import Image

from huatuo_cli.record import Answer

if TYPE_CHECKING:
    from huatuo_cli.engine.session import ModelInfo

#: answer(images, question): made once per batch, the boundary the loop knows the engine by
AnswerFn = Callable[[list[Image.Image], str], Answer]
#: what records and the audit log say about the model: the engine's ModelInfo, or a plain mapping
#: (test doubles, benchmarks)
ModelRef = Union["ModelInfo", Mapping[str, Any]]


@dataclass
class StudyInputs:
    """A study's decoded images, ready for the model."""

    images: list[Image.Image]          # PIL RGB images, in the order the model sees them
    inputs: list[str]                  # content hashes of the input files
    window: str | None = None          # the window actually applied (preset name or "C/W")


@dataclass
class Job:
    """One unit of a batch: a study (or a series with --per series)."""

    key: str                           # PHI-free and stable across runs: the resume key
    load: Callable[[], StudyInputs]    # decodes the images; may raise for a bad study
    series: str | None = None
    sources: list[Path] = field(default_factory=list)  # DICOM files behind the images (SR references)
    audit_id: str | None = None        # identifier the audit log hashes (e.g. StudyInstanceUID)


@dataclass
class BadFile:
    """A file the scan could not use. `key` is its path relative to the batch folder."""

    key: str
    reason: str
