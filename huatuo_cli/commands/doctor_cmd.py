"""`huatuo doctor`: the click command; the checks it runs are `huatuo_cli/doctor.py`."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from huatuo_cli.doctor import SCHEMA, run_checks


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object.")
def doctor(as_json: bool) -> None:
    """Check this machine: CPU, memory, GPUs, ONNX Runtime providers, llama.cpp, bundles, offline.

    Exit code 1 when a check fails. Bundles are re-hashed, which takes a few seconds per GB.

    \b
    Examples:
      huatuo doctor
      huatuo doctor --json > doctor.json
    """
    checks = run_checks()
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        click.echo(json.dumps({"schema": SCHEMA, "ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        colours = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}
        table = Table("check", "status", "detail", title="huatuo doctor")
        for c in checks:
            table.add_row(c.name, f"[{colours[c.status]}]{c.status}[/]", c.detail)
        Console().print(table)
    if failed:
        raise SystemExit(1)
