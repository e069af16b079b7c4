"""STOW-RS against a small DICOMweb endpoint in the test (Debian's Orthanc has no DICOMweb plugin).

The endpoint checks the request the way a server would: POST to {base}/studies, a
multipart/related body of type application/dicom whose boundary and closing delimiter parse with
Python's own MIME parser (not with huatuo's builder), and every part a DICOM file pydicom reads.
It answers as PS3.18 says: 200 with a response data set, 202 with a Failed SOP Sequence, 409, 503.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner

from huatuo_cli.bundles.locate import config_file
from huatuo_cli.cli import cli
from huatuo_cli.send.destination import resolve
from huatuo_cli.send.sender import Sender
from tests.orthanc import certificate
from tests.send_helpers import batch, digest, phi_of, studies


class Stow:
    """What the endpoint received, and how it should answer (`mode`)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.posts: list[list[pydicom.Dataset]] = []
        self.problems: list[str] = []
        self.tries: Counter[str] = Counter()


def parse(content_type: str, body: bytes) -> tuple[list[pydicom.Dataset], list[str]]:
    problems: list[str] = []
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if message.get_content_type() != "multipart/related":
        problems.append(f"content type {message.get_content_type()}")
    if message.get_param("type") != "application/dicom":
        problems.append(f"type parameter {message.get_param('type')}")
    boundary = message.get_boundary()
    if not boundary or not body.rstrip().endswith(f"--{boundary}--".encode()):
        problems.append("no closing delimiter")
    if message.defects:
        problems.append(f"defects {message.defects}")
    datasets: list[pydicom.Dataset] = []
    for part in message.iter_parts():
        if part.get_content_type() != "application/dicom":
            problems.append(f"part type {part.get_content_type()}")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if payload[128:132] != b"DICM":
            problems.append("part is not a DICOM Part 10 file")
        datasets.append(pydicom.dcmread(BytesIO(payload)))
    if not datasets:
        problems.append("no parts")
    return datasets, problems


def response(datasets: list[pydicom.Dataset], *, failed: bool) -> dict[str, Any]:
    key = "00081198" if failed else "00081199"
    items = [{"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
              "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
              **({"00081197": {"vr": "US", "Value": [0xC000]}} if failed else {})} for ds in datasets]
    return {key: {"vr": "SQ", "Value": items}}


def make_handler(state: Stow) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/dicom-web/studies":
                return self.answer(404, {})
            datasets, problems = parse(self.headers["Content-Type"], body)
            state.problems += problems
            if problems:
                return self.answer(400, {})
            uid = str(datasets[0].SOPInstanceUID)
            state.tries[uid] += 1
            if state.mode == "flaky" and state.tries[uid] == 1:
                return self.answer(503, {})
            if state.mode == "conflict":
                return self.answer(409, response(datasets, failed=True))
            if state.mode == "partial":
                return self.answer(202, response(datasets, failed=True))
            state.posts.append(datasets)
            self.answer(202 if state.mode == "warning" else 200, response(datasets, failed=False))

        def answer(self, code: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def stow() -> Iterator[tuple[Stow, str]]:
    state = Stow()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


def send(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["send", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, res.stdout, res.stderr


def test_stow_posts_valid_multipart_and_never_twice(tmp_path: Path, stow: tuple[Stow, str]) -> None:
    state, url = stow
    root = studies(tmp_path / "s", 2)
    code, out, err = send(str(root), "--to", url)
    assert code == 0, err
    assert state.problems == [] and len(state.posts) == 2
    sent = {str(ds.SOPInstanceUID) for post in state.posts for ds in post}
    assert sent == {str(pydicom.dcmread(p).SOPInstanceUID) for p in root.rglob("IM*")}
    for post in state.posts:  # the parts are the files, element for element
        (ds,) = post
        (path,) = [p for p in root.rglob("IM*") if pydicom.dcmread(p).SOPInstanceUID == ds.SOPInstanceUID]
        assert ds == pydicom.dcmread(path)
    code, out, err = send(str(root), "--to", url)
    assert code == 0 and out.count("already sent") == 2 and len(state.posts) == 2
    assert all(v not in out + err for v in phi_of(root))


def test_stow_batch_send_delivers_each_sr(tmp_path: Path, stow: tuple[Stow, str]) -> None:
    state, url = stow
    root = studies(tmp_path / "s", 2)
    summary = batch(root, tmp_path / "run", send_sr=Sender(resolve(url)).send)
    assert (summary.sent, summary.unsent) == (2, 0)
    srs = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in (tmp_path / "run" / "sr").glob("*.dcm")}
    posted = {str(ds.SOPInstanceUID): ds for post in state.posts for ds in post}
    assert posted.keys() == srs.keys()
    for uid, ds in posted.items():
        assert ds.Modality == "SR" and ds == pydicom.dcmread(srs[uid])


@pytest.mark.parametrize("mode, status", [("conflict", "HTTP 409, the server stored nothing (failure reason 0xC000)"),
                                          ("partial", "did not store it (failure reason 0xC000)")])
def test_stow_refusal_is_one_clear_line_per_file_and_not_retried(tmp_path: Path, stow: tuple[Stow, str], mode: str, status: str) -> None:
    state, url = stow
    state.mode = mode
    root = studies(tmp_path / "s", 2)
    before = {p: digest(p) for p in root.rglob("IM*")}
    code, out, err = send(str(root), "--to", url, "--retry-delay", "0.01")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2 and all(status in line for line in lines), err
    assert "Traceback" not in err and all(v not in out + err for v in phi_of(root))
    assert set(state.tries.values()) == {1}  # a refusal is final: no retry
    assert {p: digest(p) for p in root.rglob("IM*")} == before
    state.mode = "ok"  # nothing was recorded as sent: the rerun sends both
    assert send(str(root), "--to", url)[0] == 0 and len(state.posts) == 2


def test_stow_202_without_failures_is_stored(tmp_path: Path, stow: tuple[Stow, str]) -> None:
    state, url = stow
    state.mode = "warning"
    root = studies(tmp_path / "s", 1)
    assert send(str(root), "--to", url)[0] == 0 and len(state.posts) == 1


def test_stow_503_is_retried_with_backoff(tmp_path: Path, stow: tuple[Stow, str]) -> None:
    state, url = stow
    state.mode = "flaky"
    root = studies(tmp_path / "s", 2)
    code, _out, err = send(str(root), "--to", url, "--retries", "2", "--retry-delay", "0.01")
    assert code == 0, err
    assert set(state.tries.values()) == {2} and len(state.posts) == 2


def test_stow_over_https_with_the_configured_ca(tmp_path: Path) -> None:
    """[pacs.NAME] url = https://..., ca_file: the server's self-signed certificate is trusted
    through ca_file, and refused without it."""
    cert, key = certificate(tmp_path)
    state = Stow()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
        config = config_file()
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f'[pacs.web]\nurl = "{url}"\nca_file = "{cert}"\n\n[pacs.untrusted]\nurl = "{url}"\n')
        root = studies(tmp_path / "s", 1)
        code, _out, err = send(str(root), "--to", "untrusted", "--retries", "0")
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err and len(state.posts) == 0
        code, _out, err = send(str(root), "--to", "web")
        assert code == 0, err
        assert len(state.posts) == 1 and state.problems == []
    finally:
        server.shutdown()
        server.server_close()


def test_no_tls_settings_on_plain_http() -> None:
    config = config_file()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[pacs.web]\nurl = "http://pacs/dicom-web"\ntls = true\n')
    code, _out, err = send(str(Path(__file__)), "--to", "web")
    assert code == 1 and "TLS settings with an http:// url" in err
