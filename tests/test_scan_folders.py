"""No study is left out silently: symlinked study folders, hidden entries and unreadable folders.

Unreadable folders: the suite runs as root in CI, and root reads a chmod 000 folder, so as root
the scan runs in a child process as the unprivileged user `nobody` (setpriv, util-linux); as any
other user it runs here on a chmod 000 folder. Either way the real permission check of the kernel
is what fails, not a patched function.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import ERRORS_NAME, read_jsonl
from huatuo_cli.batch.runner import run_batch
from huatuo_cli.imaging.scan import scan
from tests.batch_helpers import QUESTIONS, Counting
from tests.damaged_files import fresh_copy
from tests.paths import ROOT


def test_symlinked_study_folders_are_followed(tmp_path):
    elsewhere = tmp_path / "archive" / "study-b"
    fresh_copy("MR_small.dcm", elsewhere / "IM1")
    root = tmp_path / "in"
    fresh_copy("CT_small.dcm", root / "study-a" / "IM1")
    (root / "study-b").symlink_to(elsewhere, target_is_directory=True)
    (root / "again").symlink_to(root / "study-a", target_is_directory=True)  # one folder, two names
    result = scan(root)
    assert sorted(s.series[0].modality for s in result.studies) == ["CT", "MR"]
    assert not result.skipped  # each real folder read once: no duplicate lines either


def test_a_link_loop_ends(tmp_path):
    root = tmp_path / "in"
    fresh_copy("CT_small.dcm", root / "study-a" / "IM1")
    (root / "study-a" / "loop").symlink_to(root, target_is_directory=True)  # a link back up the tree
    result = scan(root)
    assert len(result.studies) == 1 and not result.skipped


def test_hidden_files_and_folders_are_read(tmp_path):
    root = tmp_path / "in"
    fresh_copy("CT_small.dcm", root / ".hidden-study" / "IM1")
    fresh_copy("MR_small.dcm", root / "study" / ".IM1")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    result = scan(root)
    assert len(result.studies) == 2
    assert [(s.path.name, s.category) for s in result.skipped] == [(".DS_Store", "not-dicom")]


def test_a_dangling_link_is_an_error_line(tmp_path):
    """Already so on main (kept: following links must not lose this line)."""
    root = tmp_path / "in"
    fresh_copy("CT_small.dcm", root / "study" / "IM1")
    (root / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    out = tmp_path / "out"
    run_batch(jobs_from_folder(root), QUESTIONS, out, Counting(), progress=PlainProgress(io.StringIO()), root=root)
    errors = read_jsonl(out / ERRORS_NAME)
    assert [(e["key"], e["kind"]) for e in errors] == [("gone", "file")] and "cannot open the file" in errors[0]["reason"]


SCAN_AS_CHILD = """
import json, sys
from huatuo_cli.imaging.scan import scan
result = scan(sys.argv[1])
print(json.dumps({"studies": len(result.studies),
                  "skipped": [[str(s.path), s.category, s.reason] for s in result.skipped]}))
"""


def _scan_unreadable(root: Path) -> dict:
    if os.geteuid() != 0:
        result = scan(root)
        return {"studies": len(result.studies), "skipped": [[str(s.path), s.category, s.reason] for s in result.skipped]}
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to scan as an unprivileged user when the tests run as root")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                           sys.executable, "-c", SCAN_AS_CHILD, str(root)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(root.parent)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_an_unreadable_folder_is_reported_not_skipped_silently():
    base = Path(tempfile.mkdtemp(prefix="huatuo-unreadable-"))  # not under pytest's owner-only tmp
    try:
        os.chmod(base, 0o755)
        root = base / "in"
        fresh_copy("CT_small.dcm", root / "readable" / "IM1")
        fresh_copy("MR_small.dcm", root / "locked" / "IM1")
        for folder in (root, root / "readable"):
            os.chmod(folder, 0o755)
        for path in root.rglob("IM1"):
            os.chmod(path, 0o644)
        os.chmod(root / "locked", 0o000)
        result = _scan_unreadable(root)
        assert result["studies"] == 1
        assert [(Path(p).name, category) for p, category, _ in result["skipped"]] == [("locked", "unreadable-folder")]
        assert "Permission denied" in result["skipped"][0][2]
    finally:
        os.chmod(base / "in" / "locked", 0o755)
        shutil.rmtree(base)
