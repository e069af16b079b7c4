"""`--to` and the config file's [pacs.NAME] tables; the ledger file itself (no PACS needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from huatuo_cli.bundles.locate import config_file
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from huatuo_cli.send.destination import Tls, resolve
from huatuo_cli.send.files import Outgoing
from huatuo_cli.send.ledger import ledger_dir
from huatuo_cli.send.sender import Sender
from huatuo_cli.send.transport import SendFailure
from tests.send_helpers import studies


def write_config(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_ad_hoc_and_url_destinations() -> None:
    dest = resolve("PACS1@pacs.example.org:104", ae_title="WS01")
    assert (dest.protocol, dest.ae_title, dest.called_ae, dest.host, dest.port) == ("dimse", "WS01", "PACS1", "pacs.example.org", 104)
    assert resolve("PACS1@[::1]:11112").host == "::1"
    web = resolve("https://pacs.example.org/dicom-web/")
    assert (web.protocol, web.url, web.tls) == ("stow-rs", "https://pacs.example.org/dicom-web", Tls())
    assert resolve("http://pacs/dicom-web").tls is None


def test_named_destinations(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    write_config(f'model = "/bundles/x"\n[pacs.main]\nae_title = "WS01"\ncalled_ae = "ORTHANC"\nhost = "pacs"\nport = 4242\n'
                 f'tls = true\nca_file = "{ca}"\nretries = 5\ntimeout = 10\n'
                 '[pacs.web]\nurl = "https://pacs/dicom-web"\n')
    main = resolve("main")
    assert (main.ae_title, main.called_ae, main.host, main.port, main.tls, main.retries, main.timeout) == \
        ("WS01", "ORTHANC", "pacs", 4242, Tls(ca_file=ca), 5, 10.0)
    assert resolve("main", ae_title="OTHER").ae_title == "OTHER"  # --ae-title wins
    assert resolve("web").protocol == "stow-rs"
    # the ledger is keyed by where files go, not by what the destination is called
    assert resolve("main").address == resolve("ORTHANC@PACS:4242").address
    assert resolve("main").ledger_name != resolve("ORTHANC@pacs:4243").ledger_name


@pytest.mark.parametrize("text, message", [
    ("[pacs.other]\nurl = \"http://x\"\n", "no PACS named 'main' in"),
    ("[pacs.main\nhost=1", "is not valid TOML"),
    ("pacs = 3\n", "`pacs` must hold tables"),
    ("[pacs.main]\nurl = \"http://x\"\nhost = \"h\"\n", "give either url (DICOMweb) or called_ae, host and port"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\n", "missing port"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\nport = \"104\"\n", "port must be a number"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\nport = 70000\n", "port 70000 is out of range"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\nport = 104\ntsl = true\n", "unknown key(s) tsl"),
    ("[pacs.main]\ncalled_ae = \"MUCH_TOO_LONG_AE_TITLE\"\nhost = \"h\"\nport = 104\n", "is not valid (1 to 16"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\nport = 104\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n", "does not exist"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\nport = 104\nca_file = \"/x\"\n", "need tls = true"),
    ("[pacs.main]\ncalled_ae = \"A\"\nhost = \"h\"\nport = 104\nretries = -1\n", "retries must be a whole number"),
    ("[pacs.main]\nurl = \"ftp://pacs\"\n", "is not an http(s):// URL"),
])
def test_config_errors_name_the_file_and_the_problem(text: str, message: str) -> None:
    path = write_config(text)
    with pytest.raises(HuatuoError) as error:
        resolve("main")
    assert message in str(error.value) and str(path) in str(error.value)


def test_unknown_name_lists_the_configured_ones() -> None:
    write_config('[pacs.alpha]\nurl = "http://a"\n[pacs.beta]\nurl = "http://b"\n')
    with pytest.raises(HuatuoError, match=r"configured: alpha, beta"):
        resolve("gamma")
    with pytest.raises(HuatuoError, match="configured: none"):
        write_config("")
        resolve("gamma")


@pytest.mark.parametrize("spec", ["AE@host", "host:104", "A@h:p", "a/b"])
def test_malformed_to(spec: str) -> None:
    with pytest.raises(HuatuoError, match="neither AET@HOST:PORT"):
        resolve(spec)


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    root = studies(tmp_path / "s", 1)
    res = CliRunner().invoke(cli, ["send", str(root), "--to", "nosuch"])
    assert res.exit_code == 1 and res.stderr.startswith("Error: no PACS named 'nosuch'") and "Traceback" not in res.output
    # batch: --send needs --sr; a bad name fails before any model is looked for
    res = CliRunner().invoke(cli, ["batch", str(root), "--out", str(tmp_path / "o"), "-q", "Q?", "--send", "x"])
    assert res.exit_code == 2 and "--send sends the SRs: it needs --sr" in res.stderr
    res = CliRunner().invoke(cli, ["batch", str(root), "--out", str(tmp_path / "o"), "-q", "Q?", "--sr", "--send", "nosuch"])
    assert res.exit_code == 1 and "no PACS named 'nosuch'" in res.stderr and not (tmp_path / "o").exists()


class Recording:
    """A transport that only records: for the ledger's own properties (the real PACS tests are in
    test_send_orthanc.py and test_send_stow.py)."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def store(self, item: Outgoing) -> None:
        self.stored.append(item.sop_instance_uid)

    def holds(self, item: Outgoing) -> bool | None:
        return None

    def close(self) -> None:
        return None


def test_ledger_is_owner_only_phi_free_and_survives_a_torn_line(tmp_path: Path) -> None:
    root = studies(tmp_path / "s", 2)
    files = sorted(root.rglob("IM*"))
    dest = resolve("A@127.0.0.1:1")
    sender = Sender(dest, transport=Recording())
    assert [sender.send(p).state for p in files] == ["sent", "sent"]
    (path,) = ledger_dir().glob("*.jsonl")
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(ledger_dir().stat().st_mode & 0o777) == "0o700"
    text = path.read_text()
    for p in files:
        ds = pydicom.dcmread(p)
        for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, str(ds.PatientName), ds.PatientID, str(p)):
            assert str(value) not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0] == {"schema": "huatuo.sent/1", "destination": dest.address}
    assert [r["state"] for r in records[1:]] == ["sending", "sent", "sending", "sent"]
    with open(path, "ab") as handle:  # a crash mid-append
        handle.write(b'{"schema": "huatuo.sent/1", "uid": "ab')
    again = Sender(dest, transport=Recording())
    assert [again.send(p).state for p in files] == ["skipped", "skipped"]
    assert again.transport.stored == []  # type: ignore[attr-defined]
    in_doubt = Sender(dest, transport=Recording())
    in_doubt.ledger.mark(str(pydicom.dcmread(files[0]).SOPInstanceUID), "0" * 64, "sending")
    assert in_doubt.send(files[0]).state == "resent"  # other content under this UID: sent again
    assert os.access(files[0], os.R_OK)


class Refusing(Recording):
    """Refuses the first `failures` attempts with a transient (or final) failure."""

    def __init__(self, failures: int, *, transient: bool = True) -> None:
        super().__init__()
        self.failures, self.transient, self.attempts = failures, transient, 0

    def store(self, item: Outgoing) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise SendFailure("busy", transient=self.transient)
        super().store(item)


def test_retry_policy_backs_off_and_is_bounded(tmp_path: Path) -> None:
    """Retries double the delay and stop after --retries; a final refusal is not retried; once a
    destination stayed down through all retries, the next file gets one attempt, not the backoff."""
    files = sorted(studies(tmp_path / "s", 3).rglob("IM*"))
    dest = resolve("A@127.0.0.1:1")
    waits: list[float] = []
    flaky = Sender(dest, retries=3, delay=0.5, transport=Refusing(2), sleep=waits.append)
    assert (flaky.send(files[0]).state, waits) == ("sent", [0.5, 1.0])
    waits.clear()
    down = Sender(dest, retries=3, delay=0.5, transport=Refusing(99), sleep=waits.append)
    outcome = down.send(files[1])
    assert (outcome.state, outcome.attempts, waits) == ("failed", 4, [0.5, 1.0, 2.0])
    assert (down.send(files[2]).attempts, waits) == (1, [0.5, 1.0, 2.0])
    final = Sender(dest, retries=3, delay=0.5, transport=Refusing(1, transient=False), sleep=waits.append)
    assert (final.send(files[2]).attempts, final.transport.attempts) == (1, 1)  # type: ignore[attr-defined]
