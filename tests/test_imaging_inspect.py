"""`huatuo inspect` through click: file, folder, bad file, PNG previews, and no PHI anywhere."""

from __future__ import annotations

import shutil

import pydicom
from click.testing import CliRunner
from PIL import Image

from huatuo_cli.cli import cli
from tests.imaging_data import build_folder, corpus, local_file, run_without_gpl_decoder


def _run(*args):
    result = CliRunner().invoke(cli, ["inspect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def _identifiers(paths) -> set[str]:
    """Patient names/IDs and UIDs read from the files themselves (the things that must not leak)."""
    found = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "AccessionNumber", "InstitutionName"):
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 3:
                found.add(value)
    return found


def test_inspect_one_file_writes_png(tmp_path):
    result = _run(local_file("CT_small.dcm"), "--png", tmp_path / "out", "--window", "lung")
    assert result.exit_code == 0
    assert "CT" in result.output and "lung" in result.output and "128x128" in result.output
    pngs = list((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).mode == "RGB"


def test_inspect_folder_and_bad_files(tmp_path):
    build_folder(tmp_path / "in")
    result = _run(tmp_path / "in", "--png", tmp_path / "out", "--count", "2")
    assert result.exit_code == 0
    assert "structured report" in result.output and "skipped 2 file(s)" in result.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2 * 3 + 2  # 3 DICOM series, 2 pictures

    bad = tmp_path / "bad.dcm"
    bad.write_text("hello")
    result = _run(bad)
    assert result.exit_code == 1 and "not a DICOM file" in result.output

    # without the optional GPL decoder (hidden in a fresh interpreter) a 12-bit JPEG names the extra
    proc = run_without_gpl_decoder("from huatuo_cli.cli import main\nimport sys\n"
                                   f"sys.argv = ['huatuo', 'inspect', {str(local_file('JPGExtended.dcm'))!r}]\nmain()\n")
    assert proc.returncode == 1 and "dicom-gpl" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    result = _run(tmp_path / "nothing-here")
    assert result.exit_code != 0

    result = _run(local_file("CT_small.dcm"), "--window", "lungs")
    assert result.exit_code == 2 and "unknown window" in result.output


def test_inspect_multiframe_all_frames(tmp_path):
    result = _run(local_file("emri_small.dcm"), "--frame", "all", "--png", tmp_path)
    assert result.exit_code == 0
    assert len(list(tmp_path.rglob("*.png"))) == 10


def test_no_patient_identifiers_in_output_or_png_names(tmp_path):
    """Names, IDs and UIDs of every shipped test file appear neither on stdout nor in PNG paths."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = [p for k, p in corpus().items() if p.suffix == ".dcm" and "TINY_ALPHA" not in k]
    for i, path in enumerate(files):
        shutil.copy(path, folder / f"{i:04d}.dcm")
    secrets = _identifiers(files)
    assert len(secrets) > 50
    result = _run(folder, "--png", tmp_path / "out", "--count", "1")
    assert result.exit_code == 0
    names = [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")]
    assert names
    for secret in secrets:
        assert secret not in result.output, secret
        assert not any(secret in n for n in names), secret
