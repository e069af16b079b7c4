"""STOW-RS (DICOMweb, PS3.18 section 10.5) with the standard library: one POST per instance.

`POST {base}/studies` with `Content-Type: multipart/related; type="application/dicom";
boundary=...`, one part holding the Part 10 file. The answer is read as PS3.18 describes it:
200 stored; 202 stored with warnings, or some failed (the Failed SOP Sequence (0008,1198) says
which); 409 none stored; other 4xx is the request's fault and will not get better by retrying;
5xx and network errors are worth another try. The response body is parsed only for its status
attributes and never echoed (a server may quote the data set back).
"""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.error
import urllib.request
from typing import Any

from huatuo_cli.send.destination import Destination
from huatuo_cli.send.dimse import ssl_context
from huatuo_cli.send.files import Outgoing
from huatuo_cli.send.transport import SendFailure

FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE = "00081155"
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


def multipart(parts: list[bytes], boundary: str) -> bytes:
    """A multipart/related body of application/dicom parts (CRLF line ends, closing delimiter)."""
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks)


class StowTransport:
    def __init__(self, destination: Destination, *, timeout: float = 30.0) -> None:
        self.endpoint = destination.url.rstrip("/") + "/studies"
        self.timeout = timeout
        self._context: ssl.SSLContext | None = ssl_context(destination.tls) if destination.tls else None

    def store(self, item: Outgoing) -> None:
        boundary = "huatuo-" + secrets.token_hex(16)
        while boundary.encode("ascii") in item.part10:  # a boundary must not occur in the body
            boundary = "huatuo-" + secrets.token_hex(16)
        request = urllib.request.Request(
            self.endpoint, data=multipart([item.part10], boundary), method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, _read(exc)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SendFailure(f"cannot reach {self.endpoint}: {reason}", transient=True) from None
        self._check(status, body, item)

    def _check(self, status: int, body: bytes, item: Outgoing) -> None:
        if status == 200:
            return
        failed = _failures(body, item.sop_instance_uid)
        if status == 202:
            if failed is None:
                return  # stored, with warnings
            raise SendFailure(f"STOW-RS: the server did not store it (failure reason {failed})", transient=False)
        if status == 409:
            detail = f" (failure reason {failed})" if failed else ""
            raise SendFailure(f"STOW-RS: HTTP 409, the server stored nothing{detail}", transient=False)
        raise SendFailure(f"STOW-RS: HTTP {status} from {self.endpoint}", transient=status in TRANSIENT_HTTP)

    def holds(self, item: Outgoing) -> bool | None:
        return None  # a QIDO-RS query would tell; until then an in-doubt instance is sent again

    def close(self) -> None:
        return None


def _read(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except OSError:
        return b""


def _failures(body: bytes, sop_instance_uid: str) -> str | None:
    """The failure reason code for this instance in a STOW-RS response dataset, or None if the
    response lists no failure for it. A response that is not DICOM JSON counts as no list."""
    try:
        data: Any = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(data, list):
        data = data[0] if data and isinstance(data[0], dict) else {}
    if not isinstance(data, dict):
        return None
    for entry in data.get(FAILED_SOP_SEQUENCE, {}).get("Value", []) or []:
        if not isinstance(entry, dict):
            continue
        uid = (entry.get(REFERENCED_SOP_INSTANCE, {}).get("Value") or [None])[0]
        if uid in (None, sop_instance_uid):
            code = (entry.get(FAILURE_REASON, {}).get("Value") or [None])[0]
            return f"0x{code:04X}" if isinstance(code, int) else "unknown"
    return None
