"""Issue 10's "Done when" for the SR: over a folder of real files from pydicom and pydicom-data (CT,
MR, CR, US, enhanced and multi-frame images, every charset image file), `huatuo batch --sr` on a
real tiny bundle writes SRs that dciodvfy passes with no error of their own and that highdicom and
dsrdump read; they name the bundle, mark truncated answers, carry no forbidden character; a rerun
with one more question rewrites every SR with all answers; no patient name reaches the terminal.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_charset_files, get_testdata_file

from huatuo_cli.batch.report import study_slug
from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.batch.sr import SR_DIR, TRUNCATED_NOTE
from huatuo_cli.cli import cli
from tests.sr_checks import bad_characters, dsrdump, frames_referenced, groups, own_errors, text_of

pytestmark = pytest.mark.slow

FILES = [
    "CT_small.dcm", "MR_small.dcm", "ExplVR_BigEnd.dcm",  # CT, MR, US
    "SC_rgb_rle_2frame.dcm", "examples_overlay.dcm",  # multi-frame secondary capture, overlay
    "RG3_J2KI.dcm", "OBXXXX1A_rle_2frame.dcm",  # pydicom-data: CR (lossy J2K), multi-frame US
    "emri_small.dcm", "eCT_Supplemental.dcm",  # pydicom-data: enhanced MR (10 frames), enhanced CT
    "color3d_jpeg_baseline.dcm",  # pydicom-data: 120-frame lossy JPEG US
]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # a single-frame IOD
QUESTIONS = ["Describe the image.", "Any abnormality?"]


def corpus_folder(root: Path) -> Path:
    paths = [Path(get_testdata_file(n, download=False)) for n in FILES]
    paths += [Path(f) for f in get_charset_files() if f.endswith(".dcm") and "SQEncoding" not in f]
    for i, path in enumerate(paths):
        (root / f"{i:02d}").mkdir(parents=True)
        shutil.copy(path, root / f"{i:02d}" / path.name)
    return root


def patient_names(root: Path) -> set[str]:
    names = set()
    for path in root.rglob("*.dcm"):
        name = str(pydicom.dcmread(path, stop_before_pixels=True).get("PatientName", "") or "")
        names |= {part for part in name.replace("^", " ").replace("=", " ").split() if len(part) > 3}
    return names - {"Anonymized"}


def test_batch_srs_over_real_files_pass_dciodvfy_and_read_back(tmp_path, tiny_bundle):
    root, out = corpus_folder(tmp_path / "in"), tmp_path / "out"
    runner = CliRunner()
    args = ["batch", str(root), "--out", str(out), "--model", str(tiny_bundle), "--max-tokens", "3", "--sr",
            "--thumbnails", "all"]
    res = runner.invoke(cli, args + [a for q in QUESTIONS for a in ("-q", q)])
    assert res.exit_code == 1, res.output  # the charset files without pixel data, and duplicates
    errors = read_jsonl(out / ERRORS_NAME)
    assert {e["reason"].split(":")[0] for e in errors} == {"not an image", "duplicate"}, errors
    records = read_jsonl(out / RESULTS_NAME)
    studies = {r["study"] for r in records}
    srs = sorted((out / SR_DIR).glob("*.dcm"))
    assert len(studies) >= 20 and len(srs) == len(studies)
    manifest_sha = hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in root.rglob("*.dcm")}
    stopped_by = {(study_slug(r["study"]), r["question"]): r["stopped_by"] for r in records}
    assert "max-tokens" in stopped_by.values()  # three tokens cut most answers: the flag is exercised
    for path in srs:
        sr = hd.sr.srread(path)  # highdicom reads it back as a Comprehensive 3D SR
        assert isinstance(sr, hd.sr.Comprehensive3DSR)
        dsrdump(path)
        found = groups(sr)
        assert len(found) == len(QUESTIONS)
        referenced = set().union(*(frames_referenced(g) for g in found))
        sources = [by_uid[uid] for uid in referenced]
        assert own_errors(path, sources) == [], path.name
        assert bad_characters(sr) == []
        assert sr.SpecificCharacterSet == "ISO_IR 192" and sr.VerificationFlag == "UNVERIFIED"
        source = pydicom.dcmread(sources[0], stop_before_pixels=True)
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert str(sr.get("PatientName", "")) == str(source.get("PatientName", ""))
        serials = [i.TextValue for i in sr.ContentSequence if "TextValue" in i
                   and i.ConceptNameCodeSequence[0].CodeMeaning == "Device Observer Serial Number"]
        assert serials == [manifest_sha]
        for group in found:
            for uid, numbers in frames_referenced(group).items():
                ds = pydicom.dcmread(by_uid[uid], stop_before_pixels=True)
                frames = int(ds.get("NumberOfFrames") or 1)
                # frames referenced where the IOD has frames (SC_rgb_rle_2frame: 2 frames, single-frame SC class)
                assert (numbers != []) == (frames > 1 and ds.SOPClassUID != SECONDARY_CAPTURE), ds.SOPClassUID
                assert len(set(numbers)) == len(numbers) <= 6 and all(1 <= n <= frames for n in numbers)
            question = text_of(group, "Tracking Identifier")[0].split(": ", 1)[1]
            stopped = stopped_by[(path.stem, question)]
            assert (TRUNCATED_NOTE in text_of(group, "Comment")) == (stopped == "max-tokens")
    for name in patient_names(root):
        assert name not in res.output + res.stderr
    # --thumbnails all: every thumbnail is in the report, those of possible burned-in annotation too
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<img ") == len(list((out / "thumbs").glob("*.png")))
    assert "may carry burned-in annotation" in html and "left out of this shareable report" not in html
    for report in ("report.md", "report.html"):  # the model's raw output is cleaned there too
        text = (out / report).read_text(encoding="utf-8")
        assert not [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F], report
    # a rerun with one more question rewrites every SR with all three answers, as a new instance that
    # names the one it replaces (Predecessor Documents Sequence), still with no dciodvfy error of its own
    before = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in srs}
    res = runner.invoke(cli, args + [a for q in [*QUESTIONS, "Which organ?"] for a in ("-q", q)])
    assert res.exit_code == 1, res.output
    assert f"{len(srs)} SRs" in res.stderr
    for path in srs:
        new = pydicom.dcmread(path)
        assert len(groups(new)) == 3
        (study,) = new.PredecessorDocumentsSequence
        (series,) = study.ReferencedSeriesSequence
        assert study.StudyInstanceUID == new.StudyInstanceUID
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [before[path].SOPInstanceUID]
        assert new.SOPInstanceUID != before[path].SOPInstanceUID
        referenced = set().union(*(frames_referenced(g) for g in groups(new)))
        assert own_errors(path, [by_uid[uid] for uid in referenced]) == [], path.name
