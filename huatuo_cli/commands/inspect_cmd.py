"""`huatuo inspect PATH`: what is in a file or folder, and what the model would see of it.

Prints one PHI-free row per series (keys instead of UIDs, no names, dates, descriptions or
paths), counts of skipped files by reason, and optionally writes preview PNGs named only by
study key / series key / index.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.frames import FrameChoice
from huatuo_cli.imaging.load import load_image
from huatuo_cli.imaging.options import frame_option, window_option
from huatuo_cli.imaging.overlays import draw
from huatuo_cli.imaging.scan import ScanResult, Series, Study, scan
from huatuo_cli.imaging.windows import WindowChoice
from huatuo_cli.privacy import private_dir, writable_folder, write_private


def _render_series(
    study: Study, series: Series, *, count: int, window: WindowChoice, frame: FrameChoice | None, out: Path | None
) -> tuple[str, str, HuatuoError | None]:
    """Render the series' representatives -> (status, window text, error). Writes PNGs when `out` is set.

    With an explicit `frame`, each representative instance is rendered once with that frame.
    """
    reps = series.representatives(count, one_per_instance=frame is not None)
    windows, written = [], 0
    for index, rep in enumerate(reps):
        try:
            image = load_image(rep.instance.path, window=window, frame=rep.frame if frame is None else frame)
        except HuatuoError as exc:
            return getattr(exc, "reason", None) or str(exc).splitlines()[0], "", exc
        assert image.meta is not None  # files always carry meta; only in-memory pictures lack it
        windows.append(image.meta.window)
        if out is not None:
            folder = private_dir(out / study.key / series.key)
            masks = image.overlays or [None] * len(image.frames)
            for frame_index, picture, mask in zip(image.meta.frames, image.frames, masks, strict=False):
                picture = draw(picture, mask)  # overlays as a viewer draws them (imaging.overlays)
                name = f"{index:02d}.png" if len(image.frames) == 1 else f"{index:02d}-f{frame_index:03d}.png"
                encoded = io.BytesIO()
                picture.save(encoded, format="PNG")
                write_private(folder / name, encoded.getvalue())  # owner-only, like every output
                written += 1
    status = "ok" if out is None else f"ok, {written} png"
    return status, (windows[0] if windows else ""), None


def _table(result: ScanResult, **render: Any) -> tuple[Table, int, list[HuatuoError]]:
    table = Table(title="huatuo inspect", title_justify="left")
    for column in ("study", "series", "#", "modality", "images", "frames", "size", "syntax", "window", "status"):
        table.add_column(column, overflow="fold", max_width=34 if column in ("syntax", "window", "status") else None)
    usable = 0
    errors: list[HuatuoError] = []
    for study in result.studies:
        for series in study.series:
            status, window, error = _render_series(study, series, **render)
            usable += error is None
            if error is not None:
                errors.append(error)
            instances = series.instances
            sizes = sorted({f"{i.rows}x{i.columns}" for i in instances})
            syntaxes = sorted({i.transfer_syntax for i in instances})
            table.add_row(
                study.key, series.key, "" if series.number is None else str(series.number),
                series.modality or ("image" if study.kind == "images" else ""), str(len(instances)),
                str(series.number_of_frames), ", ".join(sizes[:2]) + (" ..." if len(sizes) > 2 else ""),
                "; ".join(syntaxes[:2]) + (" ..." if len(syntaxes) > 2 else ""), window, status,
            )
    return table, usable, errors


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--png", "png_dir", type=click.Path(path_type=Path, file_okay=False),
              help="write preview PNGs (what the model sees, overlays drawn) to OUTDIR/<study>/<series>/<n>.png")
@window_option()
@frame_option()
@click.option("--count", default=3, show_default=True, type=click.IntRange(1, 64),
              help="representative images per series (middle plus evenly spaced, localizers skipped)")
def inspect(path: Path, png_dir: Path | None, window: WindowChoice, frame: FrameChoice | None, count: int) -> None:
    """Show the studies and series in PATH (a file or a folder) and how they render.

    Only headers are read to group files; representative images are decoded to check them.
    Nothing identifying is printed: studies and series appear as short hashed keys.

    \b
    Examples:
      huatuo inspect ~/exports/ct-chest
      huatuo inspect scan.dcm --window lung --png /tmp/preview
      huatuo inspect ~/exports --window lung/mediastinum/bone --count 5 --png /tmp/preview
      huatuo inspect cine.dcm --frame all --png /tmp/frames
    """
    if not path.exists():
        raise HuatuoError("no such file or folder", hint="check the path you passed to inspect")
    if png_dir is not None:
        writable_folder(png_dir, what="--png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library warnings may quote header values (PHI)
        _inspect(path, png_dir, window, frame, count)


def _inspect(path: Path, png_dir: Path | None, window: WindowChoice, frame: FrameChoice | None, count: int) -> None:
    result = scan(path)
    console = Console(soft_wrap=False, width=160)
    usable = 0
    errors: list[HuatuoError] = []
    if result.studies:
        table, usable, errors = _table(result, count=count, window=window, frame=frame, out=png_dir)
        console.print(table)
    reasons = Counter((s.category, s.reason) for s in result.skipped)
    if reasons:
        console.print(f"skipped {len(result.skipped)} file(s):")
        for (_, reason), n in reasons.most_common():
            console.print(f"  {n:>5}  {reason}")
    if usable == 0:
        if len(result.skipped) == 1 and not result.studies:
            raise HuatuoError(f"nothing to show: {result.skipped[0].reason}")
        if len({str(e) for e in errors}) == 1:  # one cause for everything: say it, with its hint
            raise errors[0]
        raise HuatuoError(
            "nothing usable found: no series could be rendered",
            hint="point inspect at DICOM images (CT, MR, CR/DX, US, ...) or PNG/JPEG/TIFF files",
        )
