"""The conversation about one study: questions to the engine, answers streamed, audit, export.

No textual here either: the chat pane shows what this module returns. Answers come through the
same `huatuo_cli.answering.service.AnswerService` `huatuo ask` uses (question rules, audit of every answer,
stopped or failed ones included), on the one image the viewer shows (the reader sees exactly what
the model sees).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli.answering.service import AnswerService, Stopped
from huatuo_cli.engine.session import Conversation
from huatuo_cli.errors import HuatuoError
from huatuo_cli.privacy import NOTICE, write_private
from huatuo_cli.tui.browse import View

#: the `command` field of the audit entries this app writes
AUDIT_COMMAND = "tui"


@dataclass
class Exchange:
    """One question and its answer, with what the model was shown (PHI-free)."""

    question: str
    shown: str  # View.describe() of the image the model saw
    answer: str = ""
    outcome: str = "pending"  # then "ok", "stopped" or "error"
    tokens_per_s: float = 0.0


@dataclass
class StudyChat:
    """Everything said about one study; the engine conversation restarts when the image changes."""

    study_key: str
    audit_id: str = field(repr=False)  # the StudyInstanceUID: hashed by audit.record, never shown
    exchanges: list[Exchange] = field(default_factory=list)
    _conversation: Conversation | None = field(default=None, repr=False)
    _view_key: tuple[str, str, int, str] | None = None

    def ask(self, service: AnswerService, view: View, image: Any, question: str, *,
            on_text: Callable[[str], None], stop: threading.Event) -> Exchange:
        """Answer `question` about `image` (the rendered picture of `view`), streaming to `on_text`.

        Follow-ups about the same picture see the history; another picture starts a new engine
        conversation (the model takes its images with the first question). `stop` set while the
        answer streams ends it early: the partial answer is kept on screen, marked and audited,
        and left out of the model's history. A question the rules refuse raises before anything
        is recorded.
        """
        if self._conversation is None or self._view_key != view.key():
            self._conversation = Conversation(service.model, images=[image])
            self._view_key = view.key()
        exchange = Exchange(question=question, shown=view.describe())
        self.exchanges.append(exchange)

        def stream(text: str) -> None:
            if stop.is_set():
                raise Stopped
            exchange.answer += text
            on_text(text)

        try:
            answer = service.ask(self._conversation, question, study_id=self.audit_id, on_text=stream)
        except Stopped:
            exchange.outcome = "stopped"
        except HuatuoError:
            exchange.outcome = "error"
            raise
        else:
            exchange.answer, exchange.tokens_per_s = answer.text, answer.tokens_per_s
            exchange.outcome = "ok"
        return exchange

    def markdown(self, model_name: str) -> str:
        """The conversation as Markdown: study key, what the model saw, questions, answers, notice."""
        lines = [f"# huatuo conversation: study {self.study_key}", "",
                 f"Model bundle: {model_name}  ", f"Exported: {_now()}", "", f"> {NOTICE}", ""]
        for n, ex in enumerate(self.exchanges, 1):
            lines += [f"## {n}. {ex.question}", "", f"*Image shown to the model: {ex.shown}*", ""]
            lines += [ex.answer or "(no answer)", ""]
            if ex.outcome != "ok":
                lines += [f"*({ex.outcome})*", ""]
            lines += [f"> {NOTICE}", ""]
        return "\n".join(lines)

    def export(self, folder: Path, model_name: str) -> Path:
        """Write the Markdown owner-only (privacy.write_private) into `folder`; returns the file."""
        if not self.exchanges:
            raise HuatuoError("nothing to export yet: ask a question first")
        if not folder.is_dir():
            raise HuatuoError("the export folder does not exist", hint="pass --export-dir FOLDER")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        try:
            return write_private(folder / f"huatuo-chat-{self.study_key}-{stamp}.md", self.markdown(model_name))
        except OSError as exc:
            raise HuatuoError(f"could not write the export: {exc.strerror}", hint="pass --export-dir FOLDER") from exc


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
