"""A synthetic evaluation set in the official layout: one JSON list and an images/ folder beside it,
several data sets, open items (not scored), DICOM files and a series folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from demo.samples import sample_file

OPTIONS = ["pleural effusion", "pneumothorax", "cardiomegaly", "normal"]


def write_eval_set(root: Path, *, copies: int = 1) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_file("CT_small.dcm"), images / "ct.dcm")
    (images / "series").mkdir(exist_ok=True)
    shutil.copy(sample_file("MR_small.dcm"), images / "series" / "mr.dcm")
    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(images / "photo.png")
    items = []
    for _ in range(copies):
        items += [
            {"question": "What is shown?", "options": OPTIONS, "answer": "cardiomegaly", "image": ["images/photo.png"],
             "dataset": "VQA-RAD", "subset": "x", "question_type": "closed"},
            {"question": "Which finding?", "options": OPTIONS[:2], "answer": "pneumothorax", "image": ["images/ct.dcm"],
             "dataset": "SLAKE", "question_type": "closed", "window": "lung"},
            {"question": "What sequence?", "options": ["T1", "T2"], "answer": "T1", "image": ["images/series"],
             "dataset": "PathVQA", "question_type": "closed"},
            {"question": "Describe it.", "options": [], "answer": "a lung", "image": ["images/photo.png"],
             "dataset": "VQA-RAD", "question_type": "open"},
            {"question": "Open again?", "options": OPTIONS, "answer": "normal", "image": ["images/photo.png"],
             "dataset": "SLAKE", "question_type": "open"},
        ]
    path = root / "medical_multimodel_evaluation_data.json"
    path.write_text(json.dumps(items))
    return path
