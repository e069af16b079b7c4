"""`huatuo batch --from NAME --study UID | --since DATE`: studies fetched from a PACS by C-GET.

C-GET (not C-MOVE) because it needs no reverse connection: the PACS sends the instances back over
the association we opened, so the workstation needs no listening port and no entry as a move
destination in the PACS. Studies are found by C-FIND (Study Root, STUDY level) when `--since` is
given. The instances land in huatuo's private cache (owner-only folders and files, named by hashes,
never by patient), one folder per request, so that a rerun of the same request resumes the same
batch; the batch itself then runs on that folder as on any other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import platformdirs

from huatuo_cli import APP_NAME as APP
from huatuo_cli.errors import HuatuoError
from huatuo_cli.privacy import private_dir, write_private
from huatuo_cli.send.destination import Destination
from huatuo_cli.send.dimse import DimseTransport

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"   # Study Root Query/Retrieve - GET
#: what we accept the instances in: uncompressed, deflated and the usual compressed syntaxes, so
#: the PACS can send what it holds without transcoding
ACCEPTED_SYNTAXES = [
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP)) / "pacs"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Retrieved:
    folder: Path      # the batch folder: one sub-folder per study
    studies: int
    instances: int


def retrieve(destination: Destination, *, studies: list[str], since: dt.date | None = None,
             timeout: float = 30.0) -> Retrieved:
    """Fetch the given studies (or every study dated `since` or later) into the private cache."""
    if destination.protocol != "dimse":
        raise HuatuoError(f"--from {destination.name}: retrieval needs a DIMSE peer (called_ae, host, port); "
                          "WADO-RS is not supported yet")
    link = DimseTransport(destination, timeout=timeout)
    uids = list(dict.fromkeys(studies))
    if since is not None:
        uids += [u for u in _find_studies(link, since) if u not in uids]
    if not uids:
        raise HuatuoError(f"no study found at {destination.name}" + (f" dated {since:%Y-%m-%d} or later" if since else ""))
    folder = private_dir(cache_dir() / _hash(destination.address + "\n" + "\n".join(sorted(uids))))
    count = 0
    for uid in uids:
        count += _get_study(link, uid, private_dir(folder / _hash(uid)))
    return Retrieved(folder, len(uids), count)


def _find_studies(link: DimseTransport, since: dt.date) -> list[str]:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyDate = f"{since:%Y%m%d}-"
    query.StudyInstanceUID = ""
    assoc = _open(link, [(FIND_MODEL, s) for s in ACCEPTED_SYNTAXES[:2]])
    found: list[str] = []
    try:
        for status, identifier in assoc.send_c_find(query, FIND_MODEL):
            code = getattr(status, "Status", None)
            if code is None:
                raise HuatuoError("the PACS did not answer the study query (C-FIND)")
            if code in (0xFF00, 0xFF01) and identifier is not None and identifier.get("StudyInstanceUID"):
                found.append(str(identifier.StudyInstanceUID))
            elif code not in (0x0000, 0xFF00, 0xFF01):
                raise HuatuoError(f"the PACS refused the study query: C-FIND status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return found


def _get_study(link: DimseTransport, study_uid: str, folder: Path) -> int:
    """C-GET one study into `folder`; the number of instances received."""
    from pydicom.dataset import Dataset
    from pynetdicom import StoragePresentationContexts, build_role, evt

    received = 0

    def store(event: Any) -> int:
        nonlocal received
        ds = event.dataset
        ds.file_meta = event.file_meta
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_private(folder / f"{_hash(str(ds.SOPInstanceUID))}.dcm", buffer.getvalue())
        received += 1
        return 0x0000

    storage = [c.abstract_syntax for c in StoragePresentationContexts if c.abstract_syntax]
    contexts = [(GET_MODEL, s) for s in ACCEPTED_SYNTAXES[:2]] + [(c, "") for c in storage]
    roles = [build_role(c, scp_role=True) for c in storage]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    assoc = _open(link, contexts, roles=roles, handlers=[(evt.EVT_C_STORE, store)])
    final: int | None = None
    try:
        for status, _identifier in assoc.send_c_get(query, GET_MODEL):
            final = getattr(status, "Status", None)
            if final is None:
                raise HuatuoError("the PACS stopped answering during the retrieval (C-GET)")
    finally:
        if assoc.is_established:
            assoc.release()
    if final not in (0x0000, 0xB000) or not received:
        reason = "no such study" if final == 0x0000 else f"C-GET status 0x{final or 0:04X}"
        raise HuatuoError(f"a study could not be retrieved: {reason}")
    return received


def _open(link: DimseTransport, contexts: list[tuple[str, str]], *, roles: list[Any] | None = None,
          handlers: list[Any] | None = None) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=link.destination.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = link.timeout
    for abstract, syntax in contexts:
        ae.add_requested_context(abstract, syntax or ACCEPTED_SYNTAXES)
    dest = link.destination
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_ae, ext_neg=roles or None,
                             evt_handlers=handlers or None, tls_args=link.tls_args)
    except (OSError, ValueError) as exc:
        raise HuatuoError(f"cannot connect to {dest.host}:{dest.port}: {exc}") from None
    if not assoc.is_established:
        raise HuatuoError(f"no DICOM association with {dest.called_ae}@{dest.host}:{dest.port}",
                          hint="check called_ae, host, port, and that the PACS allows our AE title "
                               f"{dest.ae_title} to query and retrieve")
    return assoc

