"""click option types for `--window` and `--frame`, shared by every command that renders images.

They wrap the library parsers (`parse_window`, `parse_frame`) so the CLI and the Python API
accept exactly the same strings and report the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.frames import parse_frame
from huatuo_cli.imaging.windows import CT_PRESETS, parse_window

F = TypeVar("F", bound=Callable[..., Any])

WINDOW_HELP = (
    "auto (default: the file's window, else a CT preset, else percentiles), a CT preset ("
    + ", ".join(CT_PRESETS)
    + "), C,W (e.g. 40,400), or three of them as R/G/B, e.g. lung/mediastinum/bone"
)
FRAME_HELP = "frame of multi-frame images: a 0-based index, mid or all"


class ParsedType(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic only in newer click
    """A click type that delegates to one of the library parsers (HuatuoError -> usage error)."""

    def __init__(self, name: str, parse: Callable[[str], object]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value)
        except HuatuoError as exc:
            self.fail(str(exc), param, ctx)


def window_option(default: str = "auto") -> Callable[[F], F]:
    return click.option("--window", "window", type=ParsedType("WINDOW", parse_window), default=default, show_default=True, help=WINDOW_HELP)


def frame_option(default: str | None = None) -> Callable[[F], F]:
    return click.option("--frame", "frame", type=ParsedType("FRAME", parse_frame), default=default, help=FRAME_HELP)


OVERLAYS_HELP = ("overlay planes (60xx): drawn in previews and thumbnails always; 'model' also draws them "
                 "into the images the model sees (default 'preview': the model sees the pixels only)")


def overlays_option() -> Callable[[F], F]:
    from huatuo_cli.imaging.overlays import OVERLAY_CHOICES

    return click.option("--overlays", "overlays", type=click.Choice(OVERLAY_CHOICES), default="preview",
                        show_default=True, help=OVERLAYS_HELP)
