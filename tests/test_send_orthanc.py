"""Delivery to a real PACS: Debian's Orthanc on 127.0.0.1 (tests/orthanc.py), read back over its REST API.

What is promised: the SR lands in the source study with its text and references intact; a re-run
sends nothing twice, also after a kill mid-transfer; a failing destination gives one clear line
per file, no traceback, and every file stays on disk; transient refusals are retried.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, read_jsonl
from huatuo_cli.bundles.locate import config_file
from huatuo_cli.cli import cli
from huatuo_cli.send.destination import resolve
from huatuo_cli.send.ledger import ledger_dir
from huatuo_cli.send.sender import Sender
from tests.orthanc import CALLED_AE, Orthanc, certificate, configure, free_port, running
from tests.send_helpers import QUESTIONS, batch, digest, phi_of, references, send, studies, text_values


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    yield from running(tmp_path)


def sent_lines(stdout: str) -> int:
    return sum(line.startswith("sent: ") for line in stdout.splitlines())


def assert_clean(text: str, root: Path) -> None:
    assert "Traceback" not in text
    for value in phi_of(root):
        assert value not in text, "PHI on the terminal"


def assert_same_instance(remote: pydicom.Dataset, local_path: Path) -> None:
    """Element for element, value for value (the file meta is the receiver's own: DIMSE does not
    carry it, so Orthanc writes its own group 0002)."""
    local = pydicom.dcmread(local_path)
    assert remote.file_meta.TransferSyntaxUID == local.file_meta.TransferSyntaxUID
    assert remote == local
    assert sorted(str(e.tag) for e in remote) == sorted(str(e.tag) for e in local)


def assert_sr_in_source_study(server: Orthanc, sr_path: Path) -> None:
    """The SR as Orthanc stores it: the same data set, filed in the study of the images it
    references, and those images are in that study in the PACS."""
    local = pydicom.dcmread(sr_path)
    (instance_id,) = server.find(local.SOPInstanceUID)
    remote = server.dataset(instance_id)
    assert_same_instance(remote, sr_path)
    study = server.get(f"/instances/{instance_id}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == local.StudyInstanceUID == remote.StudyInstanceUID
    in_study = {server.get(f"/instances/{i['ID']}/simplified-tags")["SOPInstanceUID"]
                for i in server.get(f"/studies/{study['ID']}/instances")}
    refs = references(remote.ContentSequence)
    assert refs and set(refs) <= in_study  # every referenced image is in the same study in the PACS
    texts = text_values(remote.ContentSequence)
    assert texts == text_values(local.ContentSequence)
    for question in QUESTIONS:
        assert any(question in t for t in texts)


@pytest.mark.slow
def test_batch_sr_send_to_orthanc_end_to_end(tmp_path: Path, orthanc: Orthanc, tiny_bundle: Path) -> None:
    """`huatuo batch --sr --send NAME` on the tiny bundle: each SR is in its source study in Orthanc."""
    root = studies(tmp_path / "studies", 2)
    configure("test", orthanc)
    code, out, err = send(str(root), "--to", "test")  # the images first: the study exists in the PACS
    assert code == 0, err
    assert sent_lines(out) == 2
    res = CliRunner().invoke(cli, ["batch", str(root), "--out", str(tmp_path / "run"), "--model", str(tiny_bundle),
                                   "--max-tokens", "6", "--sr", "--send", "test", *[arg for q in QUESTIONS for arg in ("-q", q)]])
    assert res.exit_code == 0, res.output
    assert "2 SRs sent, 0 not sent" in res.stderr
    srs = sorted((tmp_path / "run" / "sr").glob("*.dcm"))
    assert len(srs) == 2
    for sr in srs:
        assert_sr_in_source_study(orthanc, sr)
    assert len(orthanc.instance_ids()) == 4
    assert_clean(res.output, root)


def test_batch_send_round_trip_and_resume_after_failed_sends(tmp_path: Path, orthanc: Orthanc) -> None:
    """batch --send to a dead PACS keeps every SR and says why; the resumed batch sends exactly the
    unsent SRs; a third run sends nothing."""
    root = studies(tmp_path / "studies", 3)
    dead = Sender(resolve(f"{CALLED_AE}@127.0.0.1:{free_port()}"), retries=1, delay=0.01, timeout=5)
    summary = batch(root, tmp_path / "run", send_sr=dead.send)
    assert (summary.srs, summary.sent, summary.unsent, summary.exit_code) == (3, 0, 3, 1)
    srs = sorted((tmp_path / "run" / "sr").glob("*.dcm"))
    assert len(srs) == 3 and all(p.stat().st_size > 0 for p in srs)  # failed sends never lose an SR
    errors = read_jsonl(tmp_path / "run" / ERRORS_NAME)
    assert [e["kind"] for e in errors] == ["send"] * 3
    assert all(e["reason"].startswith("SR not sent: no DICOM association") for e in errors)
    assert "SR not sent" in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")

    up = Sender(resolve(orthanc.address))
    summary = batch(root, tmp_path / "run", send_sr=up.send)
    assert (summary.answered, summary.sent, summary.unsent, summary.exit_code) == (0, 3, 0, 0)
    for sr in srs:
        (instance_id,) = orthanc.find(pydicom.dcmread(sr).SOPInstanceUID)
        assert_same_instance(orthanc.dataset(instance_id), sr)
        texts = text_values(pydicom.dcmread(sr).ContentSequence)
        answers = [r["question"] for r in read_jsonl(tmp_path / "run" / RESULTS_NAME)]
        assert all(any(q in t for t in texts) for q in set(answers))
    received = orthanc.received()
    assert len(received) == 3
    for report in ("report.md", "report.html"):  # delivered now: the earlier send failures no longer stand
        assert "SR not sent" not in (tmp_path / "run" / report).read_text(encoding="utf-8")
    assert len(read_jsonl(tmp_path / "run" / ERRORS_NAME)) == 3  # errors.jsonl keeps the history

    again = batch(root, tmp_path / "run", send_sr=Sender(resolve(orthanc.address)).send)
    assert (again.sent, again.unsent) == (0, 0)
    assert orthanc.received() == received  # nothing delivered twice


def test_sr_lands_in_the_source_study(tmp_path: Path, orthanc: Orthanc) -> None:
    """The images are sent first (`huatuo send FOLDER`), then the batch's SRs: each SR shares the
    study of the images it references, byte for byte as written."""
    root = studies(tmp_path / "studies", 2)
    code, _out, err = send(str(root), "--to", orthanc.address)
    assert code == 0, err
    batch(root, tmp_path / "run", send_sr=Sender(resolve(orthanc.address)).send)
    for sr in sorted((tmp_path / "run" / "sr").glob("*.dcm")):
        assert_sr_in_source_study(orthanc, sr)
    assert len(orthanc.get("/studies")) == 2 and len(orthanc.instance_ids()) == 4


def test_send_killed_mid_transfer_then_rerun_sends_each_sr_exactly_once(tmp_path: Path, orthanc: Orthanc) -> None:
    """kill -9 while Orthanc is taking the third SR (its filter sleeps 0.3 s per instance), rerun:
    every SR reaches the PACS exactly once. The one in flight at the kill is in doubt in the ledger
    (`sending` without `sent`); the rerun asks the PACS (C-FIND) instead of sending it again."""
    root = studies(tmp_path / "studies", 6)
    batch(root, tmp_path / "run")
    sr_dir = tmp_path / "run" / "sr"
    uids = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in sr_dir.glob("*.dcm"))
    assert len(uids) == 6
    orthanc.flag("slow")
    command = [sys.executable, "-m", "huatuo_cli", "send", str(sr_dir), "--to", orthanc.address]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(orthanc.received()) < 3:
        time.sleep(0.02)  # the PACS holds the third SR and takes 0.3 s over it: kill the sender now
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    time.sleep(1.0)  # let Orthanc finish storing what it had received
    first = orthanc.received()
    assert len(first) == 3, "the kill did not land during the third transfer"
    (ledger,) = ledger_dir().glob("*.jsonl")
    assert ledger.read_text().count('"sending"') == 3 and ledger.read_text().count('"sent"') == 2
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert_clean(rerun.stdout + rerun.stderr, root)
    received = orthanc.received()
    assert sorted(received) == uids, "some SR was delivered twice or never"
    # the one in flight at the kill: found at the PACS by C-FIND, not sent again
    states = [line.split(": ")[0] for line in rerun.stdout.splitlines()]
    assert sorted(states) == ["already at the PACS"] + ["already sent"] * 2 + ["sent"] * 3
    assert sorted(orthanc.find(u)[0] for u in uids) == sorted(orthanc.instance_ids())
    third = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert third.returncode == 0 and third.stdout.count("already sent") == 6
    assert orthanc.received() == received


def test_failing_destination_one_clear_line_per_file_and_files_kept(tmp_path: Path, orthanc: Orthanc) -> None:
    root = studies(tmp_path / "studies", 3)
    before = {p: digest(p) for p in root.rglob("IM*")}
    # nothing listening
    code, out, err = send(str(root), "--to", f"{CALLED_AE}@127.0.0.1:{free_port()}", "--retries", "1",
                          "--retry-delay", "0.01", "--timeout", "5")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 3 and all("no DICOM association" in line for line in lines)
    assert {Path(line.split(": ")[1]) for line in lines} == set(before)  # named by path
    assert "0 sent, 0 already there, 3 failed" in err
    assert_clean(out + err, root)
    # the PACS refuses every instance (C-STORE status 0xA700)
    orthanc.flag("reject")
    code, out, err = send(str(root), "--to", orthanc.address, "--retries", "0")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 3 and all("C-STORE status 0xA700" in line for line in lines)
    assert_clean(out + err, root)
    assert {p: digest(p) for p in root.rglob("IM*")} == before
    assert orthanc.instance_ids() == []
    # the PACS is back: everything goes, once
    orthanc.flag("reject", False)
    code, out, err = send(str(root), "--to", orthanc.address)
    assert code == 0 and sent_lines(out) == 3
    assert len(orthanc.instance_ids()) == 3


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path, orthanc: Orthanc) -> None:
    root = studies(tmp_path / "studies", 2)
    bad = tmp_path / "bad.dcm"
    data = next(root.rglob("IM*")).read_bytes()
    bad.write_bytes(data[:200])  # a DICOM file cut in its header
    code, out, err = send(str(bad), str(root), "--to", orthanc.address)
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: {bad}: ") and "DICOM" in line and "Traceback" not in err
    assert sent_lines(out) == 2 and len(orthanc.instance_ids()) == 2


def test_transient_refusals_are_retried(tmp_path: Path, orthanc: Orthanc) -> None:
    """Orthanc refuses the first delivery of each instance: one retry gets them all in."""
    root = studies(tmp_path / "studies", 2)
    orthanc.flag("flaky")
    code, out, err = send(str(root), "--to", orthanc.address, "--retries", "2", "--retry-delay", "0.05")
    assert code == 0, err
    assert sent_lines(out) == 2 and len(orthanc.instance_ids()) == 2
    assert len(orthanc.received()) == 4  # each twice: refused, then stored


def test_changed_file_with_same_uid_is_sent_again(tmp_path: Path, orthanc: Orthanc) -> None:
    root = studies(tmp_path / "studies", 1)
    (path,) = root.rglob("IM*")
    assert send(str(path), "--to", orthanc.address)[0] == 0
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "edited"
    ds.save_as(path, enforce_file_format=True)
    code, out, _err = send(str(path), "--to", orthanc.address)
    assert code == 0 and "sent again (changed since last sent)" in out
    (instance_id,) = orthanc.find(ds.SOPInstanceUID)
    assert orthanc.dataset(instance_id).SeriesDescription == "edited"
    assert_same_instance(orthanc.dataset(instance_id), path)
    assert len(orthanc.received()) == 2


def test_unknown_ae_title_is_a_clear_error(tmp_path: Path, orthanc: Orthanc) -> None:
    root = studies(tmp_path / "studies", 1)
    code, _out, err = send(str(root), "--to", orthanc.address, "--ae-title", "STRANGER", "--retries", "0")
    assert code == 1 and "error: " in err and "Traceback" not in err
    assert orthanc.instance_ids() == []


def test_dicom_tls_with_the_configured_ca(tmp_path: Path) -> None:
    """[pacs.NAME] tls = true, ca_file: C-STORE over TLS to an Orthanc that only speaks TLS on its
    DICOM port; without the CA, or without TLS, a clear error and nothing stored."""
    cert, _key = certificate(tmp_path)
    for server in running(tmp_path, tls=(cert, _key)):
        table = f'called_ae = "{CALLED_AE}"\nhost = "127.0.0.1"\nport = {server.dicom_port}\n'
        path = config_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'[pacs.secure]\n{table}tls = true\nca_file = "{cert}"\n'
                        f'[pacs.untrusted]\n{table}tls = true\n[pacs.plain]\n{table}')
        root = studies(tmp_path / "studies", 1)
        for name in ("untrusted", "plain"):
            code, _out, err = send(str(root), "--to", name, "--retries", "0", "--timeout", "5")
            assert code == 1 and "error: " in err and "Traceback" not in err
        assert "the TLS handshake failed: check ca_file" in send(str(root), "--to", "untrusted", "--retries", "0")[2]
        assert server.instance_ids() == []
        code, out, err = send(str(root), "--to", "secure")
        assert code == 0, err
        assert sent_lines(out) == 1 and len(server.instance_ids()) == 1
