"""results.jsonl and errors.jsonl: the durable state of a batch, and what resuming reads.

Each record is appended as one line with a single O_APPEND write and fsynced before the next
study starts, so after Ctrl-C, a crash or `kill -9` the files hold every finished answer plus at
most one torn last line. Opening the folder again repairs that line (truncates it away) and
reports which (study, question) pairs are done, so a rerun answers exactly the rest.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli.answering.record import SCHEMA, upgrade
from huatuo_cli.errors import HuatuoError
from huatuo_cli.jsonl import read_jsonl as read_jsonl  # the one JSON-lines reader (audit log too)
from huatuo_cli.privacy import append_line, exclusive, private_dir, write_private

RESULTS_NAME = "results.jsonl"
ERRORS_NAME = "errors.jsonl"
ERROR_SCHEMA = "huatuo.error/1"
#: the hint for a damaged results.jsonl or errors.jsonl of the output folder (read_jsonl has its own default)
OUT_DAMAGED_HINT = "the file was edited or damaged; use a new --out folder"
LOCK_NAME = ".lock"
#: the study whose images were being decoded; left behind only when the process died doing it
DECODING_NAME = ".decoding"


def locked(out: Path) -> AbstractContextManager[None]:
    """Hold the output folder for one batch: a second batch into it at the same time would answer
    every study twice (`privacy.exclusive` on OUT/.lock)."""
    return exclusive(out / LOCK_NAME, HuatuoError(
        "another huatuo batch is writing to this output folder",
        hint="wait for it to finish, or give this batch another --out folder"))


@dataclass
class BatchState:
    """The output folder of one batch: what is done, and the appenders for what comes next."""

    out: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: (study, question) pairs answered, and error entries recorded: kept as sets so that a batch
    #: of many thousand studies does not rescan every record for every question
    done: set[tuple[str, str]] = field(init=False)
    _error_keys: set[tuple[Any, ...]] = field(init=False, repr=False)
    #: studies whose SR this run's sender confirmed at the PACS (`batch --send`): an earlier
    #: "SR not sent" line of theirs no longer stands
    delivered: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.done = {(r["study"], r["question"]) for r in self.results}
        self._error_keys = {self._error_key(e) for e in self.errors}

    @staticmethod
    def _error_key(entry: dict[str, Any]) -> tuple[Any, ...]:
        return (entry.get("kind"), entry.get("key"), entry.get("question"), entry.get("reason"))

    @classmethod
    def open(cls, out: str | os.PathLike[str]) -> BatchState:
        out = private_dir(out)
        results = [upgrade(r) for r in read_jsonl(out / RESULTS_NAME, repair=True, hint=OUT_DAMAGED_HINT)]  # older schemas read on
        for record in results:
            if record.get("schema") != SCHEMA:
                raise HuatuoError(f"{RESULTS_NAME} in the output folder has schema {record.get('schema')!r}, "
                                  f"this huatuo writes {SCHEMA!r}", hint="use a new --out folder")
        errors = read_jsonl(out / ERRORS_NAME, repair=True, hint=OUT_DAMAGED_HINT)
        return cls(out=out, results=results, errors=errors)

    def pending(self, study: str, questions: list[str]) -> list[str]:
        done = self.done
        return [q for q in questions if (study, q) not in done]

    def answers_for(self, study: str) -> list[dict[str, Any]]:
        return [r for r in self.results if r["study"] == study]

    def add_result(self, record: dict[str, Any]) -> None:
        if (record["study"], record["question"]) in self.done:
            raise ValueError("result recorded twice")  # a bug in the loop, never a user error
        append_line(self.out / RESULTS_NAME, json.dumps(record, ensure_ascii=False))
        self.results.append(record)
        self.done.add((record["study"], record["question"]))

    def add_error(self, *, kind: str, key: str, reason: str, question: str | None = None,
                  files: list[str] | None = None, crashed: bool = False) -> bool:
        """Record a failure once: a rerun that meets the same bad file does not repeat the line.
        `kind` is "file" (key: path relative to the batch folder) or "study" (key: study key).
        `files` names the files behind a study's failure (paths relative to the batch folder; this
        file is owner-only and the reports never show them); `crashed` marks a study whose decoder
        killed a process, so that every later run decodes it in a child process."""
        entry: dict[str, Any] = {"schema": ERROR_SCHEMA, "kind": kind, "key": key, "question": question, "reason": reason}
        if files:
            entry["files"] = files
        if crashed:
            entry["crashed"] = True
        if self._error_key(entry) in self._error_keys:
            return False
        append_line(self.out / ERRORS_NAME, json.dumps(entry, ensure_ascii=False))
        self.errors.append(entry)
        self._error_keys.add(self._error_key(entry))
        return True

    def decoding(self, key: str | None) -> None:
        """Note (or, with None, clear) the study being decoded: after a native crash, the next run
        finds it here and decodes that study in a child process."""
        marker = self.out / DECODING_NAME
        if key is None:
            marker.unlink(missing_ok=True)
        else:
            write_private(marker, key)

    def crashed_studies(self) -> set[str]:
        """Studies whose decode killed a process: the one left in .decoding, and those recorded."""
        keys = {e["key"] for e in self.errors if e.get("crashed")}
        marker = self.out / DECODING_NAME
        if marker.is_file():
            keys.add(marker.read_text(encoding="utf-8").strip())
        return keys

    def open_errors(self) -> list[dict[str, Any]]:
        """Errors still standing: a study that failed once and was answered on a rerun is not one,
        nor an SR that failed to send once and reached the PACS on a rerun."""
        done = self.done
        return [e for e in self.errors
                if not (e["kind"] == "study" and e.get("question") and (e["key"], e["question"]) in done)
                and not (e["kind"] == "send" and e["key"] in self.delivered)]
