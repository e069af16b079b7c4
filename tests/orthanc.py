"""A real PACS for the tests: Debian's Orthanc (`apt-get install orthanc`, `make system-deps`).

Started as a plain process, `/usr/sbin/Orthanc config.json`, with a generated configuration: its
own storage and index folders under the test's tmp_path, a free DICOM port and a free HTTP port on
127.0.0.1, no remote access, no authentication, and only our AE title allowed to store. A Lua
filter (Orthanc's ReceivedInstanceFilter) writes the SOP Instance UID of every instance that
reaches it to `received.txt`, which is the tests' independent count of deliveries (Orthanc's own
index dedups by UID, so counting instances cannot tell a duplicate send), and obeys flag files:
`reject` (every store fails with 0xA700), `flaky` (the first delivery of each UID fails),
`slow` (each store takes 0.3 s, so a sender can be killed mid-transfer).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

from huatuo_cli.bundles.locate import config_file

ORTHANC = "/usr/sbin/Orthanc"
CALLED_AE = "ORTHANC"
OUR_AE = "HUATUO"

LUA = r"""
local seen = {}
local function flag(name)
  local f = io.open("{root}/" .. name, "r")
  if f == nil then return false end
  f:close()
  return true
end
function ReceivedInstanceFilter(dicom, origin, info)
  local uid = dicom.SOPInstanceUID
  local log = io.open("{root}/received.txt", "a")
  log:write(uid .. "\n")
  log:close()
  if flag("slow") then os.execute("sleep 0.3") end
  if flag("reject") then error("rejected by the test") end
  if flag("flaky") and seen[uid] == nil then
    seen[uid] = true
    error("first delivery refused by the test")
  end
  return true
end
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc process and its REST API."""

    def __init__(self, root: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        self.root = root
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "filter.lua").write_text(LUA.replace("{root}", str(root)))
        config = {
            "Name": "huatuo-test", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": CALLED_AE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": False,
            "DicomModalities": {"huatuo": [OUR_AE, "127.0.0.1", 104]},
            "OverwriteInstances": True, "StorageCompression": False, "SaveJobs": False,
            "LuaScripts": [str(root / "filter.lua")], "DicomScpTimeout": 10,
        }
        if tls:  # DICOM TLS on the DICOM port (certificate, key); no client certificate required
            config.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(tls[0]), "DicomTlsPrivateKey": str(tls[1]),
                           "DicomTlsTrustedCertificates": str(tls[0]), "DicomTlsRemoteCertificateRequired": False})
        self.config = root / "config.json"
        self.config.write_text(json.dumps(config, indent=1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        """Our --to for it."""
        return f"{CALLED_AE}@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        with open(self.root / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("Orthanc exited: " + (self.root / "orthanc.log").read_text(errors="replace")[-2000:])
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc's REST API did not answer within 60 s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def flag(self, name: str, on: bool = True) -> None:
        path = self.root / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def received(self) -> list[str]:
        path = self.root / "received.txt"
        return path.read_text().split() if path.exists() else []

    # --- REST -------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def instance_ids(self) -> list[str]:
        return list(self.get("/instances"))

    def find(self, sop_instance_uid: str) -> list[str]:
        return list(self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}))

    def file(self, instance_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/instances/{instance_id}/file", timeout=10) as response:
            return bytes(response.read())

    def dataset(self, instance_id: str) -> pydicom.Dataset:
        return pydicom.dcmread(BytesIO(self.file(instance_id)))


def have_orthanc() -> None:
    assert Path(ORTHANC).is_file() or shutil.which("Orthanc"), \
        "Debian's orthanc is required for these tests: `make system-deps` (apt-get install orthanc)"


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl): (certificate, key)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def running(tmp_path: Path, *, tls: tuple[Path, Path] | None = None) -> Iterator[Orthanc]:
    """A running Orthanc for one test, stopped afterwards (the body of the tests' fixtures)."""
    have_orthanc()
    server = Orthanc(tmp_path / "orthanc", tls=tls).start()
    try:
        yield server
    finally:
        server.stop()


def configure(name: str, server: Orthanc) -> None:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[pacs.{name}]\nae_title = "{OUR_AE}"\ncalled_ae = "{CALLED_AE}"\n'
                    f'host = "127.0.0.1"\nport = {server.dicom_port}\n')
