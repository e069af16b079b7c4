"""Batch test material: real pydicom test files as studies, and a plain-python answer function.

The model is not the subject of the batch tests: `describe` answers from the pixels themselves
(size and mean), which is deterministic and lets a test tell which images an answer was given for.
Jobs come from the real scan (`huatuo_cli.answering.inputs.jobs_from_folder`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from huatuo_cli.answering.record import Answer

#: file name -> (PatientName, PatientID) of the pydicom test files the batch tests use
SAMPLES = {
    "CT_small.dcm": ("CompressedSamples^CT1", "1CT1"),
    "MR_small.dcm": ("CompressedSamples^MR1", "4MR1"),
    "SC_rgb.dcm": ("Lestrade^G", "ID1"),
}


def sample_folder(root: Path, *, truncated: bool = True, text_file: bool = True) -> Path:
    """A batch folder: studies nested in sub-folders, names without extension, plus bad files."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(SAMPLES):
        sub = root / f"site{i % 2}" / f"s{i}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name, download=False), sub / f"IM{i:04d}")
    if truncated:  # a study of its own whose pixel data is cut off
        import pydicom
        from pydicom.uid import generate_uid

        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        (root / "broken").mkdir(exist_ok=True)
        ds.save_as(root / "broken" / "IM9999")
        data = (root / "broken" / "IM9999").read_bytes()
        (root / "broken" / "IM9999").write_bytes(data[: len(data) - 4000])
    if text_file:
        (root / "notes.txt").write_text("not an image\n")
    return root


def describe(images: list, question: str, study_id: str | None = None) -> Answer:
    """Answer from the pixels: deterministic and image-dependent."""
    arr = np.asarray(images[0], dtype=np.float64)
    text = f"{question} -> {arr.shape[1]}x{arr.shape[0]} mean {arr.mean():.2f}"
    return Answer(text=text, tokens=len(text.split()), timings={"decode_s": 0.01})


def slow_describe(delay: float):
    def answer(images: list, question: str, study_id: str | None = None) -> Answer:
        time.sleep(delay)
        return describe(images, question)

    return answer


QUESTIONS = ["Describe the image.", "Any abnormality?"]


MODEL = {"model_sha256": "m" * 64, "bundle": "test", "vision_provider": "CPUExecutionProvider"}


class Counting:
    """make_answerer double that counts model loads and answers."""

    def __init__(self, fn=describe):
        self.loads = 0
        self.calls = 0
        self.fn = fn

    def __call__(self):
        self.loads += 1

        def answer(images, question, study_id=None):
            self.calls += 1
            return self.fn(images, question)

        return answer, MODEL


def phi_strings(root: Path) -> list[str]:
    found = [s for pair in SAMPLES.values() for s in pair]
    for path in root.rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        found += [str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)]
    return found + [str(root)]


def assert_no_phi(texts: list[str], root: Path) -> None:
    for needle in phi_strings(root):
        for text in texts:
            assert needle not in text, f"PHI {needle[:8]}... leaked"
