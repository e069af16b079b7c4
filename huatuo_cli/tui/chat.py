"""The chat pane: the history of one study, the answer streaming in, and the question box.

Model output is shown as plain `rich.text.Text`, never as markup (a random or hostile answer with
'[' in it must not restyle the screen), with control characters replaced.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Static

from huatuo_cli.privacy import NOTICE
from huatuo_cli.tui.talk import Exchange, StudyChat

PLACEHOLDER = "Ask (Enter sends, Esc stops)"
#: what an empty chat says, so a new reader knows how to start
HINT = "Press i (or Enter on a series) and type a question about the image shown; Enter sends."
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    return _CONTROL.sub("\ufffd", text)


class ChatPane(Vertical):
    """Messages (scrolling) above a one-line question box."""

    DEFAULT_CSS = """
    ChatPane { width: 46; border: round $primary; }
    ChatPane > #messages { height: 1fr; }
    ChatPane .question { color: $accent; text-style: bold; margin-top: 1; }
    ChatPane .shown { color: $text-muted; }
    ChatPane .notice { color: $warning; }
    ChatPane #ask { dock: bottom; }
    """

    def __init__(self) -> None:
        super().__init__(id="chat")
        self.border_title = "Chat"
        self._answer: Static | None = None
        self._answer_text = ""

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="messages")
        yield Input(placeholder=PLACEHOLDER, id="ask", disabled=True)

    @property
    def messages(self) -> VerticalScroll:
        return self.query_one("#messages", VerticalScroll)

    @property
    def question_box(self) -> Input:
        return self.query_one("#ask", Input)

    def show_history(self, chat: StudyChat | None) -> None:
        """Replace the messages with a study's history (switching studies switches histories)."""
        self.messages.remove_children()
        self._answer = None
        self.border_subtitle = f"study {chat.study_key}" if chat else ""
        if not (chat and chat.exchanges):
            self.messages.mount(Static(Text(HINT), classes="shown hint"))
        for exchange in chat.exchanges if chat else []:
            self.start(exchange.question, exchange.shown)
            self.stream(exchange.answer)
            if exchange.outcome != "pending":  # a pending one goes on streaming here
                self.finish(exchange)

    def start(self, question: str, shown: str) -> None:
        """A new question: it, what the model is shown, and an empty answer that will stream in."""
        for hint in self.messages.query(".hint"):
            hint.remove()
        self._answer_text = ""
        self._answer = Static(Text("…"), classes="answer")
        self.messages.mount(Static(Text(f"› {printable(question)}"), classes="question"),
                            Static(Text(f"shown: {shown}"), classes="shown"), self._answer)
        self.messages.scroll_end(animate=False)

    def stream(self, text: str) -> None:
        """One more piece of the answer (called as tokens arrive)."""
        self._answer_text += text
        if self._answer is not None:
            self._answer.update(Text(printable(self._answer_text)))
            self.messages.scroll_end(animate=False)

    def finish(self, exchange: Exchange) -> None:
        """End of an answer: its final text, how it ended, and the notice (on every answer)."""
        if self._answer is not None:
            self._answer.update(Text(printable(exchange.answer or self._answer_text) or "(no answer)"))
        tail = {"stopped": "[stopped] ", "error": "[failed] "}.get(exchange.outcome, "")
        self.messages.mount(Static(Text(f"{tail}{NOTICE}"), classes="notice"))
        self.messages.scroll_end(animate=False)
        self._answer = None
