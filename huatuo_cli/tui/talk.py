"""The conversation about one study: questions to the engine, answers streamed, audit, export.

No textual here either: the chat pane shows what this module returns. Answers come from the same
`huatuo_cli.engine.session.Conversation` `huatuo ask` uses, on the one image the viewer shows
(the reader sees exactly what the model sees), and every answer, stopped or failed ones included,
goes to the audit trail through `huatuo_cli.audit.record`, as with `ask`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli import audit
from huatuo_cli.engine.llm import Sampling
from huatuo_cli.engine.session import Conversation, VisionLanguageModel
from huatuo_cli.errors import HuatuoError
from huatuo_cli.privacy import NOTICE, write_private
from huatuo_cli.record import answer_from_generation
from huatuo_cli.tui.browse import View

#: the `command` field of the audit entries this app writes
AUDIT_COMMAND = "tui"


class Stopped(Exception):
    """Raised inside the engine's streaming callback when the reader asked to stop (Escape)."""


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

    def ask(self, model: VisionLanguageModel, view: View, image: Any, question: str, *, sampling: Sampling,
            on_text: Callable[[str], None], stop: threading.Event) -> Exchange:
        """Answer `question` about `image` (the rendered picture of `view`), streaming to `on_text`.

        Follow-ups about the same picture see the history; another picture starts a new engine
        conversation (the model takes its images with the first question). `stop` set while the
        answer streams ends it early: the partial answer is kept on screen, marked and audited,
        and left out of the model's history.
        """
        if self._conversation is None or self._view_key != view.key():
            self._conversation = Conversation(model, images=[image])
            self._view_key = view.key()
        exchange = Exchange(question=question, shown=view.describe())
        self.exchanges.append(exchange)

        def stream(text: str) -> None:
            if stop.is_set():
                raise Stopped
            exchange.answer += text
            on_text(text)

        try:
            generation = self._conversation.ask(question, sampling, on_text=stream)
        except Stopped:
            exchange.outcome = "stopped"
        except HuatuoError:
            exchange.outcome = "error"
            self._audit(model, question, exchange)
            raise
        else:
            answer = answer_from_generation(generation)
            exchange.answer, exchange.tokens_per_s = answer.text, answer.tokens_per_s
            exchange.outcome = "ok"
        self._audit(model, question, exchange)
        return exchange

    def _audit(self, model: VisionLanguageModel, question: str, exchange: Exchange) -> None:
        audit.record(AUDIT_COMMAND, model_sha256=model.info.model_sha256, study_id=self.audit_id, question=question,
                     answer_chars=len(exchange.answer), outcome=exchange.outcome)

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
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        try:
            return write_private(folder / f"huatuo-chat-{self.study_key}-{stamp}.md", self.markdown(model_name))
        except OSError as exc:
            raise HuatuoError(f"could not write the export: {exc.strerror}", hint="pass --export-dir FOLDER") from exc


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
