"""Material for the send tests: distinct studies made from pydicom's CT, SRs written by the real
batch runner (the SR writer's own entry point), and a PHI check for what reaches the terminal."""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import pydicom
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.runner import Summary, run_batch
from huatuo_cli.cli import cli
from tests.batch_helpers import describe

QUESTIONS = ["Describe the findings.", "Is there an effusion?"]


def studies(root: Path, count: int) -> Path:
    """`count` one-image studies (new study, series and instance UIDs, one patient each)."""
    base = pydicom.dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    for n in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = f"Sendtest^Patient{n}", f"PID-SEND-{n}"
        folder = root / f"study{n}"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / "IM0001", enforce_file_format=True)
    return root


def batch(root: Path, out: Path, **kwargs: object) -> Summary:
    """The real batch loop with the pixel-describing answer function (the model is not the subject)."""
    return run_batch(jobs_from_folder(root), QUESTIONS, out, lambda: (describe, {"model_sha256": "m"}), write_srs=True,
                     progress=PlainProgress(io.StringIO()), root=root, **kwargs)  # type: ignore[arg-type]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def phi_of(root: Path) -> list[str]:
    """Names, IDs and UIDs of every DICOM file under root: none may appear on the terminal."""
    found: list[str] = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue
            found += [str(ds.get(k, "")) for k in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID")]
    return [value for value in found if value]


def text_values(items: pydicom.Sequence) -> list[str]:
    """Every TextValue in an SR content tree, depth first."""
    texts: list[str] = []
    for item in items:
        if "TextValue" in item:
            texts.append(str(item.TextValue))
        if "ContentSequence" in item:
            texts += text_values(item.ContentSequence)
    return texts


def references(items: pydicom.Sequence) -> list[str]:
    """Every referenced SOP Instance UID in an SR content tree (image references, image library)."""
    refs: list[str] = []
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            refs.append(str(ref.ReferencedSOPInstanceUID))
        if "ContentSequence" in item:
            refs += references(item.ContentSequence)
    return refs


def send(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["send", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, res.stdout, res.stderr
