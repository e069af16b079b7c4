"""`huatuo tui [DIR]`: the terminal app (click command; textual is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from huatuo_cli.answering.model_options import device_option, model_option, sampling_options
from huatuo_cli.tui import GRAPHICS

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling


@click.command("tui")
@click.argument("folder", required=False, default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_option
@click.option("--graphics", type=click.Choice(GRAPHICS), default="auto", show_default=True,
              help="how images are drawn: auto (Kitty or Sixel if the terminal has it, else half-blocks)")
@click.option("--no-model", is_flag=True, help="browse and view only: do not load a model bundle")
@click.option("--export-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="where `e` writes conversations [default: the current folder]")
@sampling_options
@device_option
def tui(folder: Path, model_path: str | None, graphics: str, no_model: bool, export_dir: Path | None,
        sampling: Sampling, vision: str, threads: int | None, device: str) -> None:
    """Browse the studies in FOLDER, look at the images and ask the model about them.

    Keys are on screen (bottom line) and in the help (`?`); q quits.

    \b
    Examples:
      huatuo tui ~/exports/ct-chest
      huatuo tui --model /srv/bundles/huatuo-7b-q4_k_m ~/exports
    """
    from huatuo_cli.tui.app import make_app
    from huatuo_cli.tui.terminal import native_stderr_to_log
    from huatuo_cli.tui.viewer import image_widget_class

    image_widget_class(graphics)  # queries the terminal before Textual takes it over
    app = make_app(folder, model=model_path, load_model=not no_model, graphics=graphics, export_dir=export_dir,
                   sampling=sampling, device=device, vision=vision, threads=threads)
    with native_stderr_to_log():
        app.run()
