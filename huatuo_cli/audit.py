"""The audit trail: who asked which model what about which study, and how it ended.

One JSON line per answered (or failed) question, appended to `audit.jsonl` in the platform's user
data directory. Studies appear only as a salted hash: the salt is made once per installation and
kept owner-only beside the log, so the same study gives the same reference on this machine (an
auditor can correlate requests) while the reference cannot be reversed with a dictionary of UIDs.
Nothing else about the patient is written; the answer is recorded by length only.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import platformdirs

from huatuo_cli import APP_NAME as APP
from huatuo_cli.errors import HuatuoError
from huatuo_cli.jsonl import read_jsonl, repair_tail
from huatuo_cli.privacy import append_line, open_private_fd, private_dir

LOG_NAME = "audit.jsonl"
SALT_NAME = "audit.salt"
SCHEMA = "huatuo.audit/2"  # 2: model_id renamed model_sha256 (older lines keep their key)


def audit_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP))


def audit_path() -> Path:
    return audit_dir() / LOG_NAME


def _salt() -> bytes:
    """The installation's salt, created on first use (O_EXCL, so two first runs agree on one)."""
    folder = private_dir(audit_dir())
    path = folder / SALT_NAME
    try:
        fd = open_private_fd(path, os.O_WRONLY | os.O_EXCL)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
    text = path.read_text(encoding="ascii").strip()
    if not text:  # a crash between create and write: make a new one
        path.unlink()
        return _salt()
    return bytes.fromhex(text)


def study_ref(study_id: str) -> str:
    """Salted, irreversible reference for a study identifier (e.g. its StudyInstanceUID)."""
    return hmac.new(_salt(), study_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return str(os.getuid())


def record(
    command: str,
    *,
    model_sha256: str | None,
    study_id: str | None,
    question: str,
    answer_chars: int,
    outcome: str,
    node: str | None = None,
) -> dict[str, Any]:
    """Append one audit entry and return it. `outcome` is "ok" or a short PHI-free failure reason.
    `node` is the Ray node id of an answer given on a cluster node (`batch --ray`): the entry is
    written to that node's own audit trail and says which machine answered."""
    entry = {
        "schema": SCHEMA,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "user": _os_user(),
        "command": command,
        "model_sha256": model_sha256,
        "study": study_ref(study_id) if study_id else None,
        "question": question,
        "answer_chars": answer_chars,
        "outcome": outcome,
    }
    if node is not None:
        entry["node"] = node
    try:
        private_dir(audit_dir())
        fd = open_private_fd(audit_path(), os.O_WRONLY | os.O_APPEND)
        try:  # one writer at a time, so the repair never cuts another process's line in flight
            fcntl.flock(fd, fcntl.LOCK_EX)
            repair_tail(audit_path())  # a torn last line from a crash must not swallow this entry
            append_line(audit_path(), json.dumps(entry, ensure_ascii=False))
        finally:
            os.close(fd)  # releases the lock
    except OSError as exc:
        raise HuatuoError(f"cannot write the audit trail in {audit_dir()} ({exc.strerror or exc.__class__.__name__})",
                          hint="make that folder writable: every answer is audited") from exc
    return entry


def ensure_writable() -> None:
    """Check, before any question is answered, that the audit trail can be written: open the log
    for appending (creating the folder, the salt and the file if needed) and write nothing.

    An answer must never go unaudited, so a command that cannot audit refuses to start instead of
    answering and failing afterwards.
    """
    try:
        _salt()
        os.close(open_private_fd(audit_path(), os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise HuatuoError(
            f"cannot write the audit trail in {audit_dir()} ({exc.strerror or exc.__class__.__name__}); "
            "nothing was answered",
            hint="make that folder writable (or set XDG_DATA_HOME to a writable place): every answer is audited",
        ) from exc


def read_entries(path: Path | None = None) -> list[dict[str, Any]]:
    """Every entry of the log. A torn last line (a crash during the final append) is skipped; a
    damaged line before good ones is refused (HuatuoError), never silently dropped: an audit
    trail that loses entries without saying so is worse than one that cannot be read."""
    return read_jsonl(path or audit_path(), hint="the audit log was edited or damaged; keep it for review")
