"""One DICOM Comprehensive 3D SR per study: the model's answers as an unverified TID 1500 report.

The SR is how an answer reaches PACS and viewers. It follows DICOM TID 1500 (Measurement Report),
the template the IHE AI Results (AIR) profile uses for AI output, built with highdicom's classes:
a device observer context naming huatuo and the model bundle, the language, the procedure
reported, an image library of every source image, and per question one measurement group
(TID 1501) holding the algorithm identification (TID 4019), the source images with the frame
numbers the model saw, the question as tracking identifier and the answer as a TEXT finding.
docs/sr.md maps each item to AIR and explains the choices.

It inherits the patient and study modules from the source images (so it files itself under the
right study, as a new series), is marked PARTIAL / UNVERIFIED and carries the not-for-diagnostic
notice. Identifiers are written into the file only: highdicom's warnings, which can quote the
patient's name, are captured and logged without values.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from huatuo_cli.cleantext import clean_text
from huatuo_cli.privacy import NOTICE, private_dir, write_private

log = logging.getLogger(__name__)

#: LOINC 18748-4 "Diagnostic imaging report": a title of CID 7021 (Measurement Report Document Titles).
REPORT_TITLE = ("18748-4", "LN", "Diagnostic imaging report")
#: SNOMED CT 363679005 "Imaging procedure" (CID 100): the model read images, whatever the modality.
PROCEDURE_REPORTED = ("363679005", "SCT", "Imaging procedure")
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "huatuo AI draft (unverified)"
#: UTF-8: encodes every character of every source character set and of any answer (docs/sr.md).
CHARACTER_SET = "ISO_IR 192"
SR_DIR = "sr"
TRUNCATED_NOTE = "Incomplete: the answer was cut off at the max-tokens limit."
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # CJK ideographs


@dataclass(frozen=True)
class SeenImage:
    """A source file and the 0-based frames of it the model saw (empty: a single-frame image)."""

    path: Path
    frames: tuple[int, ...] = ()


@dataclass
class AnsweredImages:
    """Answers (result records) given about one set of images: a study, or a series with --per series."""

    answers: list[dict[str, Any]]
    images: list[SeenImage] = field(default_factory=list)


def sr_path(out: Path, study_slug: str) -> Path:
    """Where a batch writes a study's SR: OUT/sr/<slug>.dcm (the folder created owner-only)."""
    return private_dir(Path(out) / SR_DIR) / f"{study_slug}.dcm"


#: Type 2 attributes of the Patient and General Study modules the SR copies from its sources:
#: real files omit some (measured: StudyID in pydicom's Japanese and Korean charset files), and
#: DICOM lets them be empty but not absent.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def read_evidence(paths: Sequence[Path]) -> list[Any]:
    """Headers of the source images, pixel data left on disk (read as the scan read them: files
    without a preamble included), with absent Type 2 patient/study attributes present and empty."""
    from huatuo_cli.imaging.dicomio import read_dicom

    evidence = [read_dicom(Path(p), headers_only=True) for p in paths]
    for ds in evidence:
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
        _conform_dates(ds)
    return evidence


def _conform_dates(ds: Any) -> None:
    """Dates and times the SR copies, in the DICOM 3 form: old ACR-NEMA style values (measured:
    StudyTime "14:04:38" in a real ultrasound file; dates "1998.05.26") lose their separators;
    a value that is still no date or time is emptied (Type 2), rather than failing the SR."""
    from pydicom.valuerep import DA, TM

    for keyword, kind, separator in (("StudyDate", DA, "."), ("PatientBirthDate", DA, "."), ("StudyTime", TM, ":")):
        value = str(ds.get(keyword) or "").strip()
        if not value:
            continue
        for candidate in (value, value.replace(separator, "")):
            try:
                kind(candidate)
            except ValueError:
                continue
            if candidate != value:
                setattr(ds, keyword, candidate)
            break
        else:
            setattr(ds, keyword, "")


@contextmanager
def quiet_highdicom() -> Iterator[None]:
    """Capture highdicom's and pydicom's warnings and log records while an SR is built and saved:
    they can quote element values (a patient name highdicom finds irregular). One value-free line
    goes to huatuo's log instead."""
    caught_logs: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught_logs.append(record)

    loggers = [logging.getLogger(name) for name in ("highdicom", "pydicom")]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    handler = Collect()
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
    kinds = sorted({w.category.__name__ for w in caught} | {r.levelname for r in caught_logs})
    if caught or caught_logs:
        log.warning("writing an SR: %d library warning(s) (%s) withheld: they may quote patient data",
                    len(caught) + len(caught_logs), ", ".join(kinds))


#: functional group sequence -> attributes highdicom's image library descriptors read at top level
_FLATTEN = {
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PlanePositionSequence": ("ImagePositionPatient",),
}


def library_view(ds: Any) -> Any:
    """A copy of a source header from which highdicom can describe the image (TID 1602).

    highdicom reads pixel spacing, orientation and position from the top level; an enhanced
    multi-frame image keeps them in its functional groups (copied up here, first frame), and some
    real files lack them altogether: then the entry keeps only modality, rows and columns (the
    view's Modality is set to OT, which asks highdicom for no modality-specific descriptors).
    """
    import copy

    import highdicom as hd

    view = copy.deepcopy(ds)
    groups = [g[0] for g in (ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")) if g]
    for group in groups:
        for sequence, keywords in _FLATTEN.items():
            items = group.get(sequence)
            for keyword in keywords:
                if items and keyword in items[0] and keyword not in view:
                    setattr(view, keyword, items[0][keyword].value)
    try:
        hd.sr.ImageLibraryEntryDescriptors(view)
    except Exception:  # missing or malformed geometry in a real file: describe what is certain
        view.Modality = "OT"
    return view


def _uid(*parts: str) -> str:
    """A UID derived from `parts`: the same inputs give the same UID on every run."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["huatuo-sr", *parts]))


def _language(answers: Sequence[dict[str, Any]]) -> tuple[str, str, str]:
    """RFC 5646 code of the content (CID 5000): Chinese when any question or answer holds Han
    characters (HuatuoGPT-Vision answers in the question's language), English otherwise."""
    text = "".join(str(r.get("question", "")) + str(r.get("answer") or "") for r in answers)
    return ("zh", "RFC5646", "Chinese") if _HAN.search(text) else ("en", "RFC5646", "English")


def _model(record: dict[str, Any]) -> dict[str, str]:
    model = record.get("model") or {}
    return {k: str(model.get(k) or "") for k in ("model_sha256", "bundle", "architecture", "quantization")}


def _device_observer(model: dict[str, str], version: str) -> Any:
    """TID 1004 device observer: huatuo (with its version) running the bundle named here."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    detail = ", ".join(v for v in (model["architecture"], model["quantization"]) if v)
    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device", model["model_sha256"]),
        name=f"huatuo {version}",
        manufacturer_name="huatuo",
        model_name=f"{model['bundle'] or 'unnamed bundle'}" + (f" ({detail})" if detail else ""),
        serial_number=model["model_sha256"] or None,  # manifest.json sha256: the exact bundle
    )
    return hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=attributes)


def _algorithm(model: dict[str, str], version: str) -> Any:
    """TID 4019: what AIR calls the algorithm's identity and version."""
    import highdicom as hd

    parameters = [f"{k}={model[k]}" for k in ("architecture", "quantization") if model[k]]
    return hd.sr.AlgorithmIdentification(
        name=f"huatuo / {model['bundle'] or 'unnamed bundle'}",
        version=f"huatuo {version}; bundle manifest sha256 {model['model_sha256'] or 'unknown'}",
        parameters=parameters or None,
        manufacturer="huatuo",
    )


def _multiframe_iod(ds: Any) -> bool:
    """Whether the image's IOD has frames to reference (highdicom's test; some real files carry
    several frames under a single-frame SOP class, measured: pydicom's SC_rgb_rle_2frame.dcm):
    otherwise the whole instance is referenced, without frame numbers."""
    try:
        from highdicom._standard_utils import is_multiframe_image
    except ImportError:  # moved in a later highdicom: trust NumberOfFrames
        return True
    return bool(is_multiframe_image(ds))


def _group(record: dict[str, Any], number: int, study_uid: str, sources: list[tuple[Any, SeenImage]],
           version: str) -> Any:
    """TID 1501 measurement group for one question and its answer."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    question = clean_text(record.get("question"), multiline=False)
    model = _model(record)
    source_images = []
    for ds, seen in sources:
        multi = int(ds.get("NumberOfFrames") or 1) > 1 and _multiframe_iod(ds)
        frames = sorted({f + 1 for f in seen.frames}) if multi and seen.frames else None
        source_images.append(hd.sr.SourceImageForMeasurementGroup.from_source_image(
            ds, referenced_frame_numbers=frames))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid("tracking", study_uid, model["model_sha256"], question), identifier=f"Q{number}: {question}"),
        algorithm_id=_algorithm(model, version),
        source_images=source_images or None,
    )
    items = [hd.sr.TextContentItem(name=codes.DCM.Finding, relationship_type="CONTAINS",
                                   value=clean_text(record.get("answer")) or "(no answer)")]
    if record.get("stopped_by") == "max-tokens":
        items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=TRUNCATED_NOTE,
                                           relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=NOTICE, relationship_type="CONTAINS"))
    group[0].ContentSequence.extend(items)
    return group


def instance_uid(study_uid: str, parts: Sequence[AnsweredImages]) -> str:
    """The SR's SOP Instance UID: a function of the study and of everything the SR says, so a rerun
    with the same answers rewrites the same instance and one with more answers makes a new one."""
    content = []
    for part in parts:
        for r in part.answers:
            content += [_model(r)["model_sha256"], str(r.get("question")), str(r.get("answer")), str(r.get("stopped_by"))]
        for seen in part.images:
            content.append(",".join(map(str, seen.frames)))
    return _uid("instance", study_uid, *content)


def build_sr(parts: Sequence[AnsweredImages], *, version: str = "", previous: Dataset | None = None) -> Any:
    """The SR dataset for one study: every answer of `parts`, each referencing its images.

    `previous` is the SR this one replaces (a rerun added questions): it is named in the
    Predecessor Documents Sequence, so a PACS and its viewer know the new instance supersedes it
    instead of showing two unrelated drafts in the study."""
    import highdicom as hd

    paths = list(dict.fromkeys(seen.path for part in parts for seen in part.images))
    evidence = read_evidence(paths)
    if not evidence:
        raise ValueError("an SR needs at least one source image")
    if len({ds.StudyInstanceUID for ds in evidence}) != 1:
        raise ValueError("the source images of one SR must belong to one study")
    answers = [r for part in parts for r in part.answers]
    if not answers:
        raise ValueError("an SR needs at least one answer")
    study_uid = str(evidence[0].StudyInstanceUID)
    by_path = dict(zip(paths, evidence, strict=True))
    groups: list[Any] = []
    for part in parts:
        sources = [(by_path[seen.path], seen) for seen in part.images]
        for record in part.answers:
            groups.append(_group(record, len(groups) + 1, study_uid, sources, version))
    first = _model(answers[0])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device_observer(first, version)),
        procedure_reported=hd.sr.CodedConcept(*PROCEDURE_REPORTED),
        imaging_measurements=groups,
        title=hd.sr.CodedConcept(*REPORT_TITLE),
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept(*_language(answers))),
        referenced_images=[library_view(ds) for ds in evidence],
    )
    sop_instance_uid = instance_uid(study_uid, parts)
    predecessors = [previous] if previous is not None and str(previous.get("StudyInstanceUID", "")) == study_uid \
        and str(previous.get("SOPInstanceUID", "")) not in ("", sop_instance_uid) else None
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=_uid("series", study_uid, first["model_sha256"]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        previous_versions=predecessors,
        instance_number=len(answers),
        manufacturer="huatuo",
        manufacturer_model_name=clean_text(first["bundle"], multiline=False)[:64] or "huatuo",
        software_versions=f"huatuo {version}"[:64] if version else None,
        series_description=SERIES_DESCRIPTION,
        is_complete=False,
        is_final=False,
        is_verified=False,
        specific_character_set=CHARACTER_SET,
    )


def is_current(path: Path, parts: Sequence[AnsweredImages]) -> bool:
    """Whether `path` already holds the SR these answers make (its instance UID matches)."""
    import pydicom

    if not path.is_file() or not parts or not parts[0].images:
        return False
    try:
        existing = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        study = read_evidence([parts[0].images[0].path])[0].StudyInstanceUID
    except Exception:  # unreadable old file: rewrite it
        return False
    return str(existing.get("SOPInstanceUID", "")) == instance_uid(str(study), parts)


def write_sr(path: Path, sources: Sequence[Path], answers: list[dict[str, Any]], *,
             frames: dict[Path, tuple[int, ...]] | None = None) -> Path:
    """One study's SR for answers all given about the same `sources` (0-based `frames` seen per
    multi-frame source): the simple case of `write_study_sr`."""
    frames = frames or {}
    return write_study_sr(path, [AnsweredImages(answers, [SeenImage(Path(p), frames.get(Path(p), ())) for p in sources])])


def _previous_version(path: Path) -> Dataset | None:
    """The SR at `path` from an earlier run (its header), if a readable one is there."""
    import pydicom

    if not path.is_file():
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True,
                               specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
    except Exception:  # a damaged old file: the new SR simply names no predecessor
        return None


def write_study_sr(path: Path, parts: Sequence[AnsweredImages]) -> Path:
    """Build one study's SR and write it owner-only and atomically (temp file, fsync, rename), so
    a rerun with more answers replaces the file whole and a reader (or `--send`) never sees half."""
    from huatuo_cli import __version__

    with quiet_highdicom():
        sr = build_sr(parts, version=__version__, previous=_previous_version(path))
        buffer = BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
    return write_private(path, buffer.getvalue())
