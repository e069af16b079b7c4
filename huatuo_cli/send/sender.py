"""Send files to one destination: ledger first, bounded retries with backoff, one outcome per file.

Shared by `huatuo send` and `huatuo batch --send`. A file's failure is reported and the next file
goes on; nothing here deletes or changes a file. When a destination stays unreachable through all
retries of one file, the following files get one attempt each (not the full backoff) until one
succeeds, so a PACS that is down costs one backoff, not one per file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huatuo_cli.errors import HuatuoError
from huatuo_cli.send import files
from huatuo_cli.send.destination import Destination
from huatuo_cli.send.ledger import SENDING, SENT, Ledger
from huatuo_cli.send.transport import SendFailure, Transport

DEFAULT_RETRIES = 3
DEFAULT_DELAY = 1.0
MAX_DELAY = 30.0
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one file. `state`: sent, resent (changed since last sent), skipped (this
    content was sent before), present (in doubt after a kill, and the PACS has it), failed."""

    path: Path
    state: str
    reason: str = ""
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.state != "failed"


def make_transport(destination: Destination, timeout: float) -> Transport:
    if destination.protocol == "stow-rs":
        from huatuo_cli.send.stow import StowTransport

        return StowTransport(destination, timeout=timeout)
    from huatuo_cli.send.dimse import DimseTransport

    return DimseTransport(destination, timeout=timeout)


class Sender:
    def __init__(self, destination: Destination, *, retries: int | None = None, delay: float = DEFAULT_DELAY,
                 timeout: float | None = None, transport: Transport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.destination = destination
        self.retries = retries if retries is not None else (
            destination.retries if destination.retries is not None else DEFAULT_RETRIES)
        self.delay = delay
        self.transport = transport or make_transport(destination, timeout or destination.timeout or DEFAULT_TIMEOUT)
        self.ledger = Ledger.for_destination(destination.ledger_name, destination.address)
        self.sleep = sleep
        self._unreachable = False

    def send(self, path: Path) -> Outcome:
        """Send one file unless the ledger says this content already arrived."""
        try:
            item = files.load(path)
        except HuatuoError as exc:
            return Outcome(path, "failed", str(exc))
        uid, digest = item.sop_instance_uid, item.sha256
        status = self.ledger.status(uid, digest)
        if status == "sent":
            return Outcome(path, "skipped")
        if status == "in-doubt" and self.transport.holds(item):
            self.ledger.mark(uid, digest, SENT)
            return Outcome(path, "present")
        self.ledger.mark(uid, digest, SENDING)
        attempts = 1 if self._unreachable else self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self.transport.store(item)
            except SendFailure as failure:
                if not failure.transient or attempt == attempts:
                    self._unreachable = failure.transient
                    return Outcome(path, "failed", str(failure), attempt)
                self.sleep(min(self.delay * 2 ** (attempt - 1), MAX_DELAY))
                continue
            self._unreachable = False
            self.ledger.mark(uid, digest, SENT)
            return Outcome(path, "resent" if status == "changed" else "sent", attempts=attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.transport.close()


def describe(outcome: Outcome) -> str:
    """One PHI-free line for the terminal: the file by its path, never by patient."""
    if outcome.state == "failed":
        tries = f" (after {outcome.attempts} attempts)" if outcome.attempts > 1 else ""
        return f"error: {outcome.path}: {outcome.reason}{tries}"
    return {"sent": "sent", "resent": "sent again (changed since last sent)", "skipped": "already sent",
            "present": "already at the PACS"}[outcome.state] + f": {outcome.path}"
