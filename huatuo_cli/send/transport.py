"""What a delivery protocol offers the sender, and how it fails.

A transport stores one instance at a time and says, when it can, whether the PACS already holds
one (the check the sender makes for a transfer a kill left in doubt). Failures carry a PHI-free
reason and whether trying again may help: a refused connection or a busy PACS is worth a retry,
a PACS that rejects the data set is not.
"""

from __future__ import annotations

from typing import Protocol

from huatuo_cli.send.files import Outgoing


class SendFailure(Exception):
    """One instance not stored. `transient`: a later attempt may succeed."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class Transport(Protocol):
    def store(self, item: Outgoing) -> None:
        """Deliver one instance; return only once the PACS confirmed it; else raise SendFailure."""

    def holds(self, item: Outgoing) -> bool | None:
        """Whether the PACS has this SOP instance (None: this transport cannot tell)."""

    def close(self) -> None:
        """Release connections."""
