"""The record of what was sent where, so that a re-run sends nothing twice.

One append-only JSON-lines file per destination address (not per name: two names for the same
PACS share it) under huatuo's data folder, `sent/<name>-<hash of address>.jsonl`, owner-only,
each line fsynced before the next file is touched. It lives there rather than beside the files
because the same SR may be sent from a batch folder, a copy, or `huatuo send`, and because a
folder the user deletes should not make the PACS receive its files again.

A line holds no PHI: the SOP Instance UID only as its SHA-256, the file's content SHA-256, the
state and the time. Two states per send: `sending` is written (and fsynced) before the transfer
and `sent` after the PACS confirmed it. So after a kill the ledger tells the three cases apart:
confirmed (skip), never started (send), and in doubt (`sending` without `sent`: the PACS may have
stored it; the sender asks the PACS before sending again).

Key: (UID hash, content hash). The same file again is skipped; a *changed* file with the same SOP
Instance UID (an SR rewritten with more answers in place) is sent again, and the PACS decides
whether the new version replaces the old one (Orthanc's OverwriteInstances, for instance).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from huatuo_cli import APP_NAME as APP
from huatuo_cli.jsonl import read_jsonl
from huatuo_cli.privacy import append_line, private_dir

SCHEMA = "huatuo.sent/1"
SENDING, SENT = "sending", "sent"


def ledger_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP)) / "sent"


def instance_key(sop_instance_uid: str) -> str:
    """The ledger's handle on an instance: a hash, so the file names no study."""
    return hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Entry:
    state: str
    sha256: str


class Ledger:
    """What one destination has received, read once and appended to as files go out."""

    def __init__(self, path: Path, address: str) -> None:
        self.path = path
        self.address = address
        self.last: dict[str, Entry] = {}
        for record in read_jsonl(path, repair=True, hint="the record of what was sent was edited or damaged; "
                                 "move it aside to start a new one (files already at the PACS are then sent again)"):
            if record.get("schema") == SCHEMA and record.get("state") in (SENDING, SENT):
                self.last[record["uid"]] = Entry(record["state"], record["sha256"])

    @classmethod
    def for_destination(cls, ledger_name: str, address: str) -> Ledger:
        return cls(private_dir(ledger_dir()) / ledger_name, address)

    def status(self, sop_instance_uid: str, sha256: str) -> str:
        """`sent` (this exact content confirmed), `in-doubt` (transfer started, never confirmed),
        `changed` (another content under this UID was sent) or `new`."""
        entry = self.last.get(instance_key(sop_instance_uid))
        if entry is None:
            return "new"
        if entry.sha256 != sha256:
            return "changed"
        return "sent" if entry.state == SENT else "in-doubt"

    def mark(self, sop_instance_uid: str, sha256: str, state: str) -> None:
        key = instance_key(sop_instance_uid)
        record = {"schema": SCHEMA, "uid": key, "sha256": sha256, "state": state,
                  "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        if not self.path.exists():  # the first line says where these went (no PHI in an address)
            append_line(self.path, json.dumps({"schema": SCHEMA, "destination": self.address}))
        append_line(self.path, json.dumps(record))
        self.last[key] = Entry(state, sha256)
