"""Synthetic fine-tuning data: a few images (real DICOM from pydicom's wheel, a PNG) with answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from demo.samples import sample_file

QUESTION = "Describe the abnormality."
#: image file -> (window, answer); one question, so only the image tells the answers apart
SAMPLES = {
    "ct.dcm": ("lung", "Left pleural effusion."),
    "mr.dcm": ("auto", "No acute infarct."),
    "photo.png": ("auto", "Cardiomegaly."),
}


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(sample_file("MR_small.dcm"), folder / "mr.dcm")
    rng = np.random.default_rng(3)
    pixels = (rng.random((48, 80, 3)) * 255).astype(np.uint8)  # not square: padded as LLaVA pads
    Image.fromarray(pixels).save(folder / "photo.png")


def record(image: str, question: str, answer: str, window: str = "auto", key: str = "image") -> dict:
    rec: dict = {"id": image, key: f"img/{image}" if key == "image" else [f"img/{image}"],
                 "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                   {"from": "gpt", "value": answer}]}
    if window != "auto":
        rec["window"] = window
    return rec


def write_dataset(root: Path, name: str = "train.jsonl") -> Path:
    """root/img/* and root/<name> with one record per image (both 'image' and 'images' forms)."""
    write_images(root / "img")
    lines = [record(img, QUESTION, answer, window, key="image" if i % 2 == 0 else "images")
             for i, (img, (window, answer)) in enumerate(SAMPLES.items())]
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path
