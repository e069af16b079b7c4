"""ask / batch / doctor at the command line: usage errors exit 2, user errors exit 1 with one
message and no traceback, every --help shows an example."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from huatuo_cli.cli import SUBCOMMANDS, cli

CT = get_testdata_file("CT_small.dcm", download=False)


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize("name", sorted(set(SUBCOMMANDS) - {"convert"}))
def test_every_help_has_an_example(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0 and "Example" in result.output and f"huatuo {name}" in result.output


@pytest.mark.parametrize("args", [
    ["batch", "{dir}", "--out", "{out}"],                                           # no question
    ["batch", "{dir}", "--out", "{out}", "-q", "a", "--questions", "{qfile}"],      # both
    ["batch", "{dir}", "--out", "{dir}/inside", "-q", "a"],                         # out inside folder
    ["batch", "{dir}", "-q", "a"],                                                  # no --out
    ["batch", "{dir}/missing", "--out", "{out}", "-q", "a"],                        # no such folder
    ["batch", "{dir}", "--out", "{out}", "--questions", "{empty}"],                 # empty questions file
    ["batch", "{dir}", "--out", "{out}", "-q", "a", "--per", "patient"],
    ["ask", "{dir}/missing.dcm", "what?"],
    ["ask", "what?"],
])
def test_usage_errors_exit_2(tmp_path, args):
    (tmp_path / "in").mkdir()
    (tmp_path / "q.txt").write_text("Describe.\n")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    fields = {"dir": tmp_path / "in", "out": tmp_path / "out", "qfile": tmp_path / "q.txt",
              "empty": tmp_path / "empty.txt"}
    result = invoke(*(a.format(**fields) for a in args))
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("command", [["ask", CT, "Describe."], ["batch", "{dir}", "--out", "{out}", "-q", "Describe."]])
def test_no_model_is_one_message_with_a_hint(tmp_path, command):
    (tmp_path / "in").mkdir()
    result = invoke(*(a.format(dir=tmp_path / "in", out=tmp_path / "out") for a in command))
    assert result.exit_code == 1
    assert "Error: no model bundle found" in result.output and "huatuo convert all" in result.output
