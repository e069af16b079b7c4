"""One DICOM Comprehensive 3D SR per study: the model's answers as an unverified draft report.

The SR is how an answer reaches PACS: it inherits the patient and study modules from the source
images (highdicom copies them from the evidence), so it files itself under the right study, and it
references every image the model saw by SOP Class/Instance UID. It is marked unverified and
incomplete, and carries the not-for-diagnostic-use notice, so no viewer can mistake it for a
signed report. Identifiers are only ever written into the file, never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from huatuo_cli.privacy import NOTICE, write_private

#: LOINC 18748-4: the document title of a diagnostic imaging report.
REPORT_TITLE = ("18748-4", "LN", "Diagnostic imaging report")
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "huatuo AI draft (unverified)"


def read_evidence(sources: list[Path]) -> list[Dataset]:
    """Headers of the source images, pixel data left on disk (read as the scan read them: files
    without a preamble included)."""
    from huatuo_cli.imaging.dicomio import read_dicom

    return [read_dicom(Path(p), headers_only=True) for p in sources]


def build_sr(sources: list[Path], answers: list[dict[str, Any]], *, model_sha256: str = "", software: str = "") -> Any:
    """The SR dataset for one study. `answers` are result records (question, answer) of that study."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    evidence = read_evidence(sources)
    if not evidence:
        raise ValueError("an SR needs at least one source image")
    if len({ds.StudyInstanceUID for ds in evidence}) != 1:
        raise ValueError("the source images of one SR must belong to one study")
    items: list[Any] = []  # highdicom content items of several kinds
    for record in answers:
        items.append(hd.sr.TextContentItem(name=codes.DCM.Request, value=record["question"],
                                           relationship_type="CONTAINS"))
        items.append(hd.sr.TextContentItem(name=codes.DCM.Finding, value=record["answer"] or "(no answer)",
                                           relationship_type="CONTAINS"))
    comment = f"{NOTICE} Model {model_sha256}." if model_sha256 else NOTICE
    items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=comment, relationship_type="CONTAINS"))
    for ds in evidence:
        items.append(hd.sr.ImageContentItem(name=codes.DCM.SourceImage, referenced_sop_class_uid=ds.SOPClassUID,
                                            referenced_sop_instance_uid=ds.SOPInstanceUID,
                                            relationship_type="CONTAINS"))
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept(*REPORT_TITLE))
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=root,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="huatuo",
        manufacturer_model_name=model_sha256[:64] or "huatuo",
        software_versions=software or None,
        series_description=SERIES_DESCRIPTION,
        is_complete=False,
        is_final=False,
        is_verified=False,
        **_charset(answers),
    )


def _charset(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Answers may be Chinese: then UTF-8, whatever the source images used; otherwise keep theirs."""
    text = "".join(r["question"] + (r["answer"] or "") for r in answers)
    return {} if text.isascii() else {"specific_character_set": "ISO_IR 192"}


def write_sr(path: Path, sources: list[Path], answers: list[dict[str, Any]], *, model_sha256: str = "") -> Path:
    """Build and write one study's SR, owner-only."""
    from io import BytesIO

    from huatuo_cli import __version__

    sr = build_sr(sources, answers, model_sha256=model_sha256, software=f"huatuo {__version__}")
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return write_private(path, buffer.getvalue())
