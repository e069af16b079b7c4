"""SRs as the batch writes them: one per study (also with --per series), referencing the frames the
model actually received, rewritten whole and atomically when a rerun adds questions, left alone
by a plain rerun. The answer function is plain python (`describe`); the model is not the subject."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.answering.record import Answer
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import ERRORS_NAME, read_jsonl
from huatuo_cli.batch.runner import SR_DIR, run_batch
from huatuo_cli.batch.sr import TRUNCATED_NOTE
from huatuo_cli.imaging import load_image
from tests.batch_helpers import describe
from tests.sr_checks import frames_referenced, groups, own_errors, text_of

MODEL = {"model_sha256": "c" * 64, "bundle": "tiny", "architecture": "llava-qwen2", "quantization": "f16"}


class Recording:
    """make_answerer double: remembers every image it was shown; Q2 answers are cut by max-tokens."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self):
        def answer(images, question, study_id=None):
            self.seen.extend(np.asarray(i) for i in images)
            result = describe(images, question)
            if question.startswith("Q2"):
                result.stopped_by = "max-tokens"
            return result

        return answer, MODEL


def run(root: Path, out: Path, questions: list[str], answerer=None, **kw):
    return run_batch(jobs_from_folder(root, **kw), questions, out, answerer or Recording(), write_srs=True,
                     progress=PlainProgress(io.StringIO()), root=root)


def folder(root: Path, *names: str) -> Path:
    root.mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copy(get_testdata_file(name, download=False), root / f"IM{i}")
    return root


def test_rerun_with_more_questions_rewrites_the_sr_atomically_with_all_answers(tmp_path, monkeypatch):
    root, out = folder(tmp_path / "in", "CT_small.dcm"), tmp_path / "out"
    assert run(root, out, ["Q1 describe"]).srs == 1
    (path,) = (out / SR_DIR).iterdir()
    first = path.read_bytes()
    assert run(root, out, ["Q1 describe"]).srs == 0 and path.read_bytes() == first  # nothing new: untouched
    # a question added: the same file now holds both answers, as a new instance of the same series
    assert run(root, out, ["Q1 describe", "Q2 more"]).srs == 1
    old, new = pydicom.dcmread(io.BytesIO(first)), pydicom.dcmread(path)
    assert [text_of(g, "Tracking Identifier") for g in groups(new)] == [["Q1: Q1 describe"], ["Q2: Q2 more"]]
    assert new.SOPInstanceUID != old.SOPInstanceUID and new.SeriesInstanceUID == old.SeriesInstanceUID
    # ... that names the SR it supersedes, so the PACS does not show two unrelated drafts
    (study,) = new.PredecessorDocumentsSequence
    assert [i.ReferencedSOPInstanceUID for i in study.ReferencedSeriesSequence[0].ReferencedSOPSequence] \
        == [old.SOPInstanceUID]
    assert "PredecessorDocumentsSequence" not in old  # the first SR has none
    assert [TRUNCATED_NOTE in text_of(g, "Comment") for g in groups(new)] == [False, True]
    assert [p.name for p in (out / SR_DIR).iterdir()] == [path.name]  # no temp file left behind
    # the rename fails (disk trouble): the previous SR stays whole, the failure is recorded
    before = path.read_bytes()

    import os

    real_replace = os.replace

    def no_rename(src, dst):
        if str(dst).endswith(".dcm"):
            raise OSError("rename refused")
        return real_replace(src, dst)

    monkeypatch.setattr("huatuo_cli.privacy.os.replace", no_rename)
    assert run(root, out, ["Q1 describe", "Q2 more", "Q3 third"]).srs == 0
    assert path.read_bytes() == before
    assert any("SR not written" in e["reason"] for e in read_jsonl(out / ERRORS_NAME))
    monkeypatch.undo()
    assert run(root, out, ["Q1 describe", "Q2 more", "Q3 third"]).srs == 1
    assert len(groups(pydicom.dcmread(path))) == 3


def test_referenced_frames_are_the_frames_the_model_received(tmp_path):
    """Oracle: render each referenced frame anew; together they are exactly the images the answer
    function was given."""
    root, out = folder(tmp_path / "in", "emri_small.dcm"), tmp_path / "out"  # 10 frames, enhanced MR
    answerer = Recording()
    run(root, out, ["Q1 describe"], answerer)
    (path,) = (out / SR_DIR).iterdir()
    sr = pydicom.dcmread(path)
    (refs,) = [frames_referenced(g) for g in groups(sr)]
    (numbers,) = refs.values()
    assert len(numbers) == 6 and len(set(numbers)) == 6
    rendered = [np.asarray(load_image(root / "IM0", frame=n - 1).frames[0]) for n in numbers]
    assert sorted(a.tobytes() for a in rendered) == sorted(a.tobytes() for a in answerer.seen)
    assert own_errors(path, [root / "IM0"]) == []


def test_per_series_still_writes_one_sr_per_study(tmp_path):
    root = folder(tmp_path / "in", "CT_small.dcm")
    ds = pydicom.dcmread(root / "IM0")
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber = generate_uid(), generate_uid(), 2
    ds.save_as(root / "IM1")  # a second series of the same study
    out = tmp_path / "out"
    summary = run(root, out, ["Q1 describe", "Q2 more"], per="series")
    assert summary.answered == 4 and summary.srs == 1
    (path,) = (out / SR_DIR).iterdir()
    sr = pydicom.dcmread(path)
    assert len(groups(sr)) == 4
    referenced = set().union(*(frames_referenced(g) for g in groups(sr)))
    assert referenced == {pydicom.dcmread(root / n, stop_before_pixels=True).SOPInstanceUID for n in ("IM0", "IM1")}


def test_answers_with_control_characters_are_cleaned_in_sr_and_reports(tmp_path):
    root, out = folder(tmp_path / "in", "CT_small.dcm"), tmp_path / "out"

    def dirty(images, question, study_id=None):
        return Answer(text="ok\x12 fine\x03\x01 done\x1d\x7f\x85", tokens=3)

    run(root, out, ["Q1 describe"], lambda: (dirty, MODEL))
    (path,) = (out / SR_DIR).iterdir()
    assert text_of(groups(pydicom.dcmread(path))[0], "Finding") == ["ok fine done"]
    for report in ("report.md", "report.html"):
        text = (out / report).read_text(encoding="utf-8")
        assert "ok fine done" in text
        assert not [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F], report
