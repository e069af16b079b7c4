"""The --sr output: a TID 1500 Comprehensive 3D SR that dciodvfy passes (no error of its own),
highdicom and dcmtk's dsrdump read, attached to the source study, referencing the frames the model
saw, naming huatuo and the bundle, for sources in every character set. Needs dcmtk and
dicom3tools (`make system-deps`)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file

from huatuo_cli.batch.sr import CHARACTER_SET, TRUNCATED_NOTE, write_sr
from huatuo_cli.imaging import scan
from huatuo_cli.privacy import NOTICE
from tests.sr_checks import bad_characters, dsrdump, frames_referenced, groups, meaning, own_errors, text_of, walk

MODEL = {"model_sha256": "ab" * 32, "bundle": "huatuo-tiny-q4", "architecture": "llava-qwen2", "quantization": "q4_k_m"}
ANSWERS = [
    {"question": "Describe the image.", "answer": "Axial CT slice;\x12 no acute finding.\x03\n<b>second line</b>\x1d",
     "stopped_by": "eog", "model": MODEL},
    {"question": "中文?\x01", "answer": "肺部未见明显异常。", "stopped_by": "max-tokens", "model": MODEL},
]


def sources(*names: str) -> list[Path]:
    return [Path(get_testdata_file(n, download=False)) for n in names]


def concept_values(sr) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in walk(sr):
        value = item.get("TextValue") or item.get("UID") or (
            item.ConceptCodeSequence[0].CodeValue if "ConceptCodeSequence" in item else None)
        if value is not None:
            out.setdefault(meaning(item), []).append(str(value))
    return out


def test_sr_is_a_tid1500_report_naming_huatuo_and_the_bundle(tmp_path):
    from huatuo_cli import __version__

    src = sources("CT_small.dcm")
    path = write_sr(tmp_path / "sr.dcm", src, ANSWERS)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    sr = hd.sr.srread(path)
    source = pydicom.dcmread(src[0], stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "PARTIAL")
    assert sr.SpecificCharacterSet == CHARACTER_SET
    # attached to the patient's study, as a new series
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.PatientName == source.PatientName
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    values = concept_values(sr)
    assert values["Language of Content Item and Descendants"] == ["zh"]  # the answers hold Chinese
    assert values["Procedure reported"] == ["363679005"]
    assert values["Observer Type"] == ["121007"]  # device
    assert values["Device Observer Name"] == [f"huatuo {__version__}"]
    assert values["Device Observer Model Name"] == ["huatuo-tiny-q4 (llava-qwen2, q4_k_m)"]
    assert values["Device Observer Serial Number"] == [MODEL["model_sha256"]]
    assert values["Device Observer UID"][0].startswith(("1.", "2."))
    # one measurement group per question, each with its algorithm, its images, its answer
    found = groups(sr)
    assert len(found) == 2
    for group, record in zip(found, ANSWERS, strict=False):
        question = record["question"].replace("\x01", "")
        assert text_of(group, "Tracking Identifier") == [f"Q{found.index(group) + 1}: {question}"]
        assert text_of(group, "Algorithm Name") == ["huatuo / huatuo-tiny-q4"]
        assert MODEL["model_sha256"] in text_of(group, "Algorithm Version")[0]
        assert __version__ in text_of(group, "Algorithm Version")[0]
        assert sorted(text_of(group, "Algorithm Parameters")) == ["architecture=llava-qwen2", "quantization=q4_k_m"]
        assert NOTICE in text_of(group, "Comment")
        assert (TRUNCATED_NOTE in text_of(group, "Comment")) == (record["stopped_by"] == "max-tokens")
        assert frames_referenced(group) == {source.SOPInstanceUID: []}  # single frame: no frame numbers
    assert text_of(found[0], "Finding") == ["Axial CT slice; no acute finding.\n<b>second line</b>"]
    assert text_of(found[1], "Finding") == ["肺部未见明显异常。"]
    assert bad_characters(sr) == []
    library = [i for i in walk(sr) if i.ValueType == "CONTAINER" and meaning(i) == "Image Library"]
    assert len(library) == 1
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in walk(library[0]) if i.ValueType == "IMAGE"] \
        == [source.SOPInstanceUID]
    dump = dsrdump(path)
    assert "Comprehensive 3D SR" in dump and "UNVERIFIED" in dump and "Finding" in dump
    assert own_errors(path, src) == []


def test_multiframe_source_references_the_frames_seen(tmp_path):
    """1-based frame numbers of exactly the frames shown (0-based in huatuo), per source."""
    mf, single = sources("emri_small.dcm", "CT_small.dcm")
    # one study: a copy of CT_small moved into emri_small's study
    ct = pydicom.dcmread(single)
    ct.StudyInstanceUID = pydicom.dcmread(mf, stop_before_pixels=True).StudyInstanceUID
    ct.save_as(tmp_path / "ct.dcm")
    path = write_sr(tmp_path / "sr.dcm", [mf, tmp_path / "ct.dcm"], ANSWERS[:1],
                    frames={mf: (0, 4, 9), tmp_path / "ct.dcm": (0,)})
    sr = pydicom.dcmread(path)
    refs = frames_referenced(groups(sr)[0])
    assert refs == {pydicom.dcmread(mf, stop_before_pixels=True).SOPInstanceUID: [1, 5, 10], ct.SOPInstanceUID: []}
    assert "Source of Measurement" in [meaning(i) for i in walk(sr)]
    assert own_errors(path, [mf, tmp_path / "ct.dcm"]) == []


def test_sr_references_every_image_of_a_multi_image_study(tmp_path):
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
    assert list(frames_referenced(groups(sr)[0])) == [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                                      for p in paths]
    assert dsrdump(path).count("IMAGE:") == 3 + 3  # image library + the group's source images


def _charset_images() -> list[Path]:
    """pydicom's charset test files that are images (two are header fragments the scan skips)."""
    return [Path(f) for f in sorted(get_charset_files()) if scan(Path(f)).studies]


@pytest.mark.parametrize("source", _charset_images(), ids=lambda p: p.name)
def test_every_source_character_set_makes_a_valid_sr(tmp_path, source):
    """['', 'ISO 2022 IR 87'], IR 149, GB18030, ISO_IR 100/126/144/192...: the SR is UTF-8, the
    patient's name comes through unchanged, and dciodvfy finds no error of the SR's own."""
    path = write_sr(tmp_path / "sr.dcm", [source], ANSWERS)
    sr = hd.sr.srread(path)
    original = pydicom.dcmread(source, stop_before_pixels=True)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.get("PatientName", "")) == str(original.get("PatientName", ""))
    assert text_of(groups(sr)[1], "Finding") == ["肺部未见明显异常。"]
    assert own_errors(path, [source]) == []
    dsrdump(path)


WARN_SCRIPT = """
import sys
from pathlib import Path
from huatuo_cli.batch.sr import write_sr
write_sr(Path(sys.argv[2]), [Path(sys.argv[1])], [{"question": "q", "answer": "a", "model": {}}])
"""


@pytest.mark.parametrize("name", ["chrGreek.dcm", "chrRuss.dcm"])
def test_highdicom_warnings_never_print_the_patient_name(tmp_path, name):
    """highdicom warns, quoting the name, about these single-component Greek and Cyrillic names:
    the warning is captured and a value-free line is logged instead."""
    source = next(p for p in _charset_images() if p.name == name)
    patient = str(pydicom.dcmread(source, stop_before_pixels=True).PatientName)
    run = subprocess.run([sys.executable, "-c", WARN_SCRIPT, str(source), str(tmp_path / "sr.dcm")],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "withheld" in run.stderr  # highdicom did warn (else this test would prove nothing)
    assert patient not in run.stderr + run.stdout
    assert not [part for part in patient.replace("^", " ").split() if len(part) > 2 and part in run.stderr]


@pytest.mark.parametrize("name,frames", [("ExplVR_BigEnd.dcm", ()), ("SC_rgb_rle_2frame.dcm", (0, 1))])
def test_real_files_with_old_or_odd_headers_make_valid_srs(tmp_path, name, frames):
    """ExplVR_BigEnd.dcm: StudyTime "14:04:38" (ACR-NEMA style), conformed to 140438 instead of
    failing the SR. SC_rgb_rle_2frame.dcm: two frames under the single-frame Secondary Capture
    class, referenced as a whole instance (frame numbers would be invalid there)."""
    (source,) = sources(name)
    path = write_sr(tmp_path / "sr.dcm", [source], ANSWERS[:1], frames={source: frames})
    sr = hd.sr.srread(path)
    assert own_errors(path, [source]) == []
    assert frames_referenced(groups(sr)[0]) == {pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID: []}
    if name == "ExplVR_BigEnd.dcm":
        assert sr.StudyTime == "140438"


LOG_SCRIPT = """
import logging, warnings
from huatuo_cli.batch.sr import quiet_highdicom
with quiet_highdicom():
    logging.getLogger("highdicom.sr.templates").warning("found DOE^JOHN twice")
    logging.getLogger("pydicom").warning("value DOE^JOHN invalid")
    warnings.warn("DOE^JOHN is unlikely to be a name")
"""


def test_library_log_records_and_warnings_are_withheld_too():
    """highdicom and pydicom also log (logging's last-resort handler prints to stderr)."""
    run = subprocess.run([sys.executable, "-c", LOG_SCRIPT], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "DOE" not in run.stderr + run.stdout
    assert "3 library warning(s)" in run.stderr
