"""Issue 11 item 5: no PHI in shareable outputs, owner-only previews, one permission policy for bundles.

A PatientName whose VR byte is damaged makes pydicom quote the name in its exception when the SR
copies the patient module; that reason must reach errors.jsonl and the reports scrubbed.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from click.testing import CliRunner
from pydicom.data import get_testdata_file

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.runner import _reason, run_batch
from huatuo_cli.bundles.bundle import BUNDLE_DIR_MODE, BUNDLE_FILE_MODE
from huatuo_cli.cli import cli
from tests.batch_helpers import describe

NAME = b"CompressedSamples^CT1"


def damaged_name_study(root: Path, vr: bytes = b"FD") -> Path:
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.find(b"\x10\x00\x10\x00PN" + bytes([len(NAME) + 1, 0]))
    assert at > 0
    data[at + 4:at + 6] = vr  # PatientName's VR byte damaged: an 8-byte float of a 22-byte value
    (root / "s1").mkdir(parents=True)
    (root / "s1" / "IM1").write_bytes(bytes(data))
    return root


def test_damaged_patient_name_stays_out_of_errors_and_reports(tmp_path):
    root = damaged_name_study(tmp_path / "in")
    out = tmp_path / "out"
    run_batch(jobs_from_folder(root), ["Describe."], out, lambda: (describe, {"model_sha256": "m"}), write_srs=True,
              progress=PlainProgress(io.StringIO()), root=root)
    errors = (out / "errors.jsonl").read_bytes()
    assert b"SR not written" in errors  # the damaged element did fail the SR ...
    for name in ("errors.jsonl", "report.md", "report.html"):
        text = (out / name).read_bytes()
        assert NAME not in text and b"CompressedSamples" not in text, name  # ... without quoting the name


def test_reason_scrubs_every_path_value_and_uid(tmp_path):
    exc = ValueError("cannot read '/home/smith_john/export/IM1' (study 1.2.840.113619.2.55.3 of b'Doe^Jane')"
                     f" under {tmp_path}/in")
    reason = _reason(exc, tmp_path / "in")
    for phi in ("smith_john", "1.2.840.113619", "Doe^Jane", str(tmp_path)):
        assert phi not in reason
    assert reason.startswith("ValueError: cannot read")


def test_inspect_png_previews_are_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        res = CliRunner().invoke(cli, ["inspect", get_testdata_file("CT_small.dcm"), "--png", str(tmp_path / "png")])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    paths = [tmp_path / "png", *(tmp_path / "png").rglob("*")]
    assert any(p.suffix == ".png" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_bundle_files_follow_one_policy(tiny_bundle):
    """Every file of a bundle 0644 and every folder 0755 (docs/bundle.md), GGUFs included."""
    for path in [tiny_bundle, *tiny_bundle.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (BUNDLE_DIR_MODE if path.is_dir() else BUNDLE_FILE_MODE), (path.name, oct(mode))
