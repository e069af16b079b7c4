"""The --sr output: a Comprehensive 3D SR that highdicom and dcmtk's dsrdump both read, attached to
the source study and referencing the real source images. Needs dcmtk (`make system-deps`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from huatuo_cli.batch.sr import write_sr
from huatuo_cli.privacy import NOTICE

ANSWERS = [
    {"question": "Describe the image.", "answer": "Axial CT slice; no acute finding.\n<b>second line</b>"},
    {"question": "中文?", "answer": "肺部未见明显异常。"},
]


def sources(*names: str) -> list[Path]:
    return [Path(get_testdata_file(n, download=False)) for n in names]


def dsrdump(path: Path) -> str:
    tool = shutil.which("dsrdump")
    assert tool, "dcmtk's dsrdump is required for this test: `make system-deps` (apt-get install dcmtk)"
    run = subprocess.run([tool, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.lstrip().startswith(("E:", "F:"))], \
        run.stdout + run.stderr
    return run.stdout


def test_sr_round_trip_with_highdicom_and_dsrdump(tmp_path):
    src = sources("CT_small.dcm")
    path = write_sr(tmp_path / "sr.dcm", src, ANSWERS, model_sha256="abc123")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    sr = hd.sr.srread(path)
    source = pydicom.dcmread(src[0], stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "PARTIAL")
    # attached to the patient's study, as a new series
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    root = sr.ContentSequence
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    texts = [(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue) for i in root if i.ValueType == "TEXT"]
    assert (codes.DCM.Finding.value, ANSWERS[0]["answer"]) in texts
    assert (codes.DCM.Finding.value, ANSWERS[1]["answer"]) in texts
    assert any(NOTICE in value for _, value in texts)
    images = [i for i in root if i.ValueType == "IMAGE"]
    assert [(i.ReferencedSOPSequence[0].ReferencedSOPClassUID, i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in images] == [(source.SOPClassUID, source.SOPInstanceUID)]
    dump = dsrdump(path)
    assert "Comprehensive 3D SR" in dump and "UNVERIFIED" in dump and "Finding" in dump
    assert dump.count("IMAGE:") == 1


def test_sr_references_every_image_of_a_multi_image_study(tmp_path):
    import copy

    base = pydicom.dcmread(sources("CT_small.dcm")[0])
    paths = []
    for n in range(3):  # three instances of one study
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = n + 1
        paths.append(tmp_path / f"im{n}")
        ds.save_as(paths[-1])
    path = write_sr(tmp_path / "sr.dcm", paths, ANSWERS[:1])
    sr = pydicom.dcmread(path)
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in sr.ContentSequence if i.ValueType == "IMAGE"]
    assert refs == [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    assert dsrdump(path).count("IMAGE:") == 3
