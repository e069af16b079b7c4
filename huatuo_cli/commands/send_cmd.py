"""`huatuo send PATH... --to DEST`: DICOM files (SRs or any other) to a PACS, each exactly once."""

from __future__ import annotations

from pathlib import Path

import click

EXIT_INTERRUPTED = 130


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "to", required=True, metavar="NAME|AET@HOST:PORT|URL",
              help="a [pacs.NAME] of the config file, a DIMSE peer (C-STORE), or a DICOMweb base URL (STOW-RS)")
@click.option("--ae-title", metavar="AET", help="our AE title (default: the config's ae_title, else HUATUO)")
@click.option("--retries", type=click.IntRange(0, 20), default=None,
              help="retries per file after a transient failure (default: config, else 3)")
@click.option("--retry-delay", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="seconds before the first retry; doubles each retry")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=None, help="network timeout in seconds (default 30)")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], to: str, ae_title: str | None, retries: int | None,
         retry_delay: float, timeout: float | None) -> None:
    """Send DICOM files, or every DICOM file under folders, to a PACS.

    What was sent is recorded per destination (in huatuo's data folder), so a rerun sends only
    what has not arrived yet, and a file changed since it was sent is sent again. A file that
    fails is named with its reason and the others still go; exit code 1 if any failed, 130 if
    interrupted.

    \b
    Examples:
      huatuo send run/sr --to main                       # [pacs.main] in the config file
      huatuo send run/sr/3f2a.dcm --to ORTHANC@pacs.example.org:104 --ae-title WS01
      huatuo send run/sr --to https://pacs.example.org/dicom-web
    """
    from huatuo_cli.imaging.dicomio import is_dicom_file
    from huatuo_cli.send import files
    from huatuo_cli.send.destination import resolve
    from huatuo_cli.send.sender import Sender, describe

    destination = resolve(to, ae_title=ae_title)
    explicit, found = files.expand(list(paths))
    dicom = [p for p in found if is_dicom_file(p)]
    todo = explicit + dicom
    sender = Sender(destination, retries=retries, delay=retry_delay, timeout=timeout)
    counts: dict[str, int] = {}
    interrupted = False
    try:
        for path in todo:
            outcome = sender.send(path)
            counts[outcome.state] = counts.get(outcome.state, 0) + 1
            click.echo(describe(outcome), err=not outcome.ok)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sender.close()
    failed = counts.get("failed", 0)
    skipped_files = len(found) - len(dicom)
    click.echo(f"{destination.protocol} to {destination.name}: {counts.get('sent', 0) + counts.get('resent', 0)} sent, "
               f"{counts.get('skipped', 0) + counts.get('present', 0)} already there, {failed} failed"
               + (f", {skipped_files} non-DICOM files skipped" if skipped_files else ""), err=True)
    if interrupted:
        click.echo("interrupted: rerun the same command to send the rest", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(1 if failed else 0)
