"""The help screen (`?`): every key, in the words a new reader needs."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from huatuo_cli.privacy import NOTICE
from huatuo_cli.tui.browse import WINDOW_CYCLE

KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓", "move through studies and series; the highlighted series is shown"),
    ("Enter / i", "ask about the image shown (focuses the question box)"),
    ("Enter (in the box)", "send the question; the answer streams in"),
    ("Esc", "stop the answer being written; else leave the question box"),
    ("w / W", "next / previous window: " + " ".join(WINDOW_CYCLE)),
    ("[ ]  PgUp PgDn", "previous / next image (slice or frame) of the series"),
    ("e", "export this study's conversation to Markdown (owner-only file)"),
    ("n", "show / hide patient names in the tree (on screen only)"),
    ("c", "the bundle's model card: what the model is, what it is and is not for"),
    ("ctrl+p", "command palette: windows by name, export, names, model card, help"),
    ("?", "this help"),
    ("q / ctrl+q", "quit"),
)


def help_text() -> str:
    width = max(len(k) for k, _ in KEYS)
    lines = [f"  {k.ljust(width)}  {what}" for k, what in KEYS]
    return "huatuo tui: keys\n\n" + "\n".join(lines) + f"\n\n{NOTICE}\n\nEsc, q or ? closes this help."


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 100; height: auto; border: round $accent; background: $surface; padding: 1 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(help_text(), markup=False, id="help-text")
