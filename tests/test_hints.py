"""Issue 19 item 6: an error's hint names only options that the command which printed it has.

The gate failure is the case that went wrong: `convert all` told the user to pass `--no-verify`,
an option only `convert gguf` has. It is triggered for real (a sentencepiece checkpoint whose chat
markers live only in `added_tokens.json`: the official slow tokenizer and sentencepiece disagree on
them, and the gate refuses). Every other hint that names an option is checked against the union of
all commands' options, and the hints the tests can trigger cheaply against their own command's `--help`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from huatuo_cli.cli import cli

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def command_options(path: list[str]) -> set[str]:
    """Every long option of `huatuo PATH...` (its own and the group's), as its --help lists them."""
    res = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return set(OPTION.findall(res.output))


def hint_options(output: str) -> set[str]:
    hints = [line for line in output.splitlines() if line.strip().startswith("hint:")]
    assert hints, output
    return set(OPTION.findall("\n".join(hints)))


def all_options() -> set[str]:
    found: set[str] = set()

    def walk(command: click.Command, ctx: click.Context) -> None:
        found.update(o for param in command.params for o in getattr(param, "opts", []) if o.startswith("--"))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(sub, click.Context(sub, parent=ctx, info_name=name))

    walk(cli, click.Context(cli, info_name="huatuo"))
    return found


def test_every_option_named_in_a_hint_exists():
    sources = [*ROOT.glob("huatuo_cli/**/*.py"), *ROOT.glob("convert/**/*.py")]
    named = {(path.relative_to(ROOT).as_posix(), option)
             for path in sources for hint in re.findall(r'hint=(f?"[^"]*")', path.read_text(encoding="utf-8"))
             for option in OPTION.findall(re.sub(r"pip install[^)'`]*", "", hint))}  # pip's own options
    assert named, "no hint names an option: the pattern no longer finds them"
    options = all_options()
    assert sorted(item for item in named if item[1] not in options) == []


@pytest.fixture(scope="module")
def gate_failing_checkpoint(make_checkpoint, tmp_path_factory) -> Path:
    """Markers only in added_tokens.json of a sentencepiece checkpoint: llama.cpp splits them out as
    user-defined tokens, sentencepiece (the reference) does not; the tokenizer gate fails."""
    src = make_checkpoint(arch="llava-llama", padded_vocab_size=640)
    dst = tmp_path_factory.mktemp("gate") / "model"
    shutil.copytree(src, dst)
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=str(dst / "tokenizer.model")).get_piece_size()
    (dst / "added_tokens.json").write_text(json.dumps({"<|user|>": size, "<|assistant|>": size + 1}))
    return dst


@pytest.mark.parametrize("command", [["convert", "gguf"], ["convert", "all"]])
def test_gate_failure_hint_names_only_the_commands_options(gate_failing_checkpoint, tmp_path, command):
    out = tmp_path / ("llm.gguf" if command[-1] == "gguf" else "bundle")
    res = CliRunner().invoke(cli, [*command, str(gate_failing_checkpoint), str(out), "--quant", "f16"])
    assert res.exit_code == 1, res.output
    assert "does not match the reference: tokenization differs" in res.output and "Traceback" not in res.output
    assert not out.exists()
    named = hint_options(res.output)
    assert named <= command_options(command), (named, res.output)
    assert ("--no-verify" in named) == (command[-1] == "gguf")  # offered where it exists


@pytest.mark.parametrize("command,extra", [(["convert", "gguf"], ["--quant", "f16"]), (["convert", "all"], ["--quant", "f16"]),
                                           (["convert", "mmproj"], [])])
def test_existing_output_hint_names_the_commands_own_option(make_checkpoint, tmp_path, command, extra):
    out = tmp_path / "exists"
    out.mkdir() if command[-1] == "all" else out.write_bytes(b"")
    res = CliRunner().invoke(cli, [*command, str(make_checkpoint()), str(out), *extra])
    assert res.exit_code == 1 and "already exists" in res.output, res.output
    assert hint_options(res.output) <= command_options(command)


def test_missing_model_hint_names_the_commands_own_option(tmp_path):
    scan = tmp_path / "scan.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(scan)
    res = CliRunner().invoke(cli, ["ask", str(scan), "Describe."])
    assert res.exit_code == 1, res.output
    assert hint_options(res.output) <= command_options(["ask"])
