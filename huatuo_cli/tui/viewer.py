"""The image pane: the picture the model would be shown, drawn in the terminal.

`textual-image` draws it: the Kitty graphics protocol or Sixel where the terminal answers its
query, coloured half-blocks everywhere else (SSH, GNOME Terminal, tmux). `graphics` picks one
explicitly: tests use "halfblock" so snapshots do not depend on the terminal running them.
"""

from __future__ import annotations

from typing import Any

from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.widgets import Static


def image_widget_class(graphics: str) -> Any:
    """The textual-image widget class for a --graphics choice (huatuo_cli.tui.GRAPHICS).

    Importing `textual_image.widget` queries the terminal (cell size, protocols): the CLI imports
    this before the app starts, since the terminal cannot be queried once Textual owns it.
    """
    from textual_image import widget

    classes = {"auto": widget.Image, "kitty": widget.TGPImage, "sixel": widget.SixelImage,
               "halfblock": widget.HalfcellImage}
    return classes[graphics]


class ScanView(Vertical):
    """The picture, a PHI-free caption under it (series, image n/N, window) and a hint when empty."""

    DEFAULT_CSS = """
    ScanView { border: round $primary; width: 1fr; }
    ScanView > #frame { width: 1fr; height: 1fr; align: center middle; }
    ScanView #picture { width: auto; height: auto; }  /* as large as fits, aspect ratio kept */
    ScanView > #caption { height: auto; max-height: 3; color: $text-muted; }
    """

    def __init__(self, graphics: str = "auto") -> None:
        super().__init__(id="viewer")
        self._image_class = image_widget_class(graphics)
        self.border_title = "Image"

    def compose(self) -> ComposeResult:
        with Container(id="frame"):
            yield self._image_class(None, id="picture")
        yield Static("Pick a series on the left (arrows), then press i to ask about it.", id="caption")

    def show(self, picture: PILImage.Image, caption: str) -> None:
        widget: Any = self.query_one("#picture")  # a textual-image widget; its class depends on --graphics
        widget.image = picture
        self.query_one("#caption", Static).update(caption)

    def caption(self, text: str) -> None:
        self.query_one("#caption", Static).update(text)
