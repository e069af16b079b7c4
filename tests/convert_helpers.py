"""Converter steps the tests run through the real CLI."""

from __future__ import annotations

from click.testing import CliRunner

from huatuo_cli.cli import cli


def convert_gguf(src, out, quant="f16"):
    res = CliRunner().invoke(cli, ["convert", "gguf", str(src), str(out), "--quant", quant])
    assert res.exit_code == 0, res.output
    return out
