"""Issue 19 item 6: an error's hint names only options that the command which printed it has.

The case that went wrong: `convert all` told the user to pass `--no-verify`, an option only
`convert gguf` has. Modules that several commands reach (checkpoint reading, bundle lookup, PACS
destinations) therefore name no option of their own; the command adds its own (`convert gguf`,
`convert all`: `_offering` in convert/commands/convert_cmd.py) or passes the option it takes (`find_bundle(option=)`,
`resolve(option=)`).

Statically: every option named in a hint in the source is listed in `REACH` with the commands that
can raise it, and each of those commands' --help lists it; a quoted `huatuo ...` command line in a
hint uses only that command's options. Dynamically: the hints and messages the tests can trigger
cheaply name only their own command's options (the gate failure for real on both commands).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from huatuo_cli.cli import cli

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
QUOTED_COMMAND = re.compile(r"`(huatuo [^`]*)`")

ASK, BATCH, TUI = ("ask",), ("batch",), ("tui",)
GGUF, ALL = ("convert", "gguf"), ("convert", "all")
FINETUNE, MERGE = ("finetune",), ("finetune", "merge")
EVAL = ("eval", "run")
#: (file, option named in one of its hints) -> the commands whose runs can raise that hint
REACH: dict[tuple[str, str], set[tuple[str, ...]]] = {
    ("huatuo_cli/tui/talk.py", "--export-dir"): {TUI},
    # huatuo serve's key and address checks (serve_cmd calls them before loading the model)
    ("huatuo_cli/serve/security.py", "--api-key-file"): {("serve",)},
    ("huatuo_cli/serve/security.py", "--tls-cert"): {("serve",)},
    ("huatuo_cli/serve/security.py", "--tls-key"): {("serve",)},
    ("huatuo_cli/engine/llm.py", "--max-tokens"): {ASK, BATCH, TUI},  # convert all's e2e check sizes n_ctx to fit
    ("huatuo_cli/engine/providers.py", "--device"): {ASK, BATCH, TUI},  # only for an asked-for --device cuda/tensorrt
    ("huatuo_cli/engine/session.py", "--vision"): {ASK, BATCH, TUI},  # --vision mmproj with a Qwen2.5-VL bundle
    ("huatuo_cli/answering/inputs.py", "--frame"): {ASK, BATCH},  # render: inputs_from_paths (ask), jobs_from_folder (batch)
    ("huatuo_cli/answering/inputs.py", "--images"): {ASK},  # inputs_from_paths
    # refuse_existing, the one "already exists" check: llm_gguf's check_target/atomic_output (gguf),
    # build_bundle (convert all), merge_run (finetune merge); convert vision and mmproj pass hints
    # that name no option
    ("huatuo_cli/atomic.py", "--force"): {GGUF, ALL, MERGE},
    ("huatuo_cli/commands/batch_cmd.py", "--questions"): {BATCH},
    ("huatuo_cli/batch/results.py", "--out"): {BATCH},
    ("huatuo_cli/batch/ray_run.py", "--ray"): {BATCH},
    ("huatuo_cli/evaluation/runner.py", "--out"): {EVAL},
    ("huatuo_cli/evaluation/answerers.py", "--temperature"): {EVAL},  # --reference decodes greedily only
    ("huatuo_cli/evaluation/answerers.py", "--sampling"): {EVAL},
    ("huatuo_cli/batch/runner.py", "--out"): {BATCH},
    ("huatuo_cli/batch/runner.py", "--allow-model-change"): {BATCH},
    ("convert/commands/convert_cmd.py", "--allow-pickle"): {GGUF, ALL},
    ("convert/commands/convert_cmd.py", "--no-verify"): {GGUF},
    ("convert/finetune/loop.py", "--skip-bad"): {FINETUNE},
    ("convert/finetune/loop.py", "--resume"): {FINETUNE},
    ("convert/finetune/loop.py", "--out"): {FINETUNE},
    # merge_run: `finetune merge`, and `finetune --merge`, which refuses an existing MERGED before
    # training and passes no base (so the config always matches)
    ("convert/finetune/merge.py", "--model"): {MERGE},
}


def command_options(path: tuple[str, ...] | list[str]) -> set[str]:
    """Every long option of `huatuo PATH...`, as its --help lists them."""
    res = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return set(OPTION.findall(res.output))


def hint_options(output: str) -> set[str]:
    hints = [line for line in output.splitlines() if line.strip().startswith("hint:")]
    assert hints, output
    return set(OPTION.findall("\n".join(hints)))


def error_options(output: str) -> set[str]:
    """Options named in the error and its hint (quoted `huatuo ...` command lines are checked apart)."""
    text = output[output.index("Error:"):]
    return set(OPTION.findall(QUOTED_COMMAND.sub("", text)))


def _strings(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def hints_in(path: Path) -> list[str]:
    """The text of every hint in one file: `hint=`/`param_hint=` values and `_offering` remedies, with
    the module-level constants and same-module functions they use (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # docstrings are not hints
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    named: dict[str, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            named.setdefault(node.targets[0].id, node.value)
        elif isinstance(node, ast.FunctionDef):
            named.setdefault(node.name, node)

    def expand(node: ast.AST, seen: set[str]) -> list[str]:
        found = list(_strings(node))
        for sub in ast.walk(node):
            name = sub.id if isinstance(sub, ast.Name) else None
            if name in named and name not in seen:
                seen.add(name)
                found += expand(named[name], seen)
        return found

    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("hint", "param_hint"):
            texts.append(" ".join(expand(node.value, set())))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_offering":
            texts.append(" ".join(expand(node.args[1], set())))
    return texts


def source_hints() -> list[tuple[str, str]]:
    sources = sorted([*ROOT.glob("huatuo_cli/**/*.py"), *ROOT.glob("convert/**/*.py")])
    return [(path.relative_to(ROOT).as_posix(), re.sub(r"pip install[^)'`]*", "", text))  # pip's own options
            for path in sources for text in hints_in(path)]


def test_every_option_named_in_a_hint_is_one_of_each_raising_commands_options():
    hints = source_hints()
    named = {(path, option) for path, text in hints for option in OPTION.findall(QUOTED_COMMAND.sub("", text))}
    assert ("convert/commands/convert_cmd.py", "--no-verify") in named and ("huatuo_cli/batch/results.py", "--out") in named, \
        "the extraction no longer finds hints it found before"
    assert sorted(named - set(REACH)) == [], "a new hint names an option: add it to REACH with the commands that reach it"
    assert sorted(set(REACH) - named) == [], "REACH lists a hint that no longer names that option"
    wrong = sorted((path, option, " ".join(command)) for (path, option), commands in REACH.items()
                   for command in commands if option not in command_options(command))
    assert wrong == []


def check_quoted(line: str) -> None:
    """A quoted `huatuo [--group-option] sub [sub] ... --option` uses only options of the command it names."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="huatuo")
    for word in line.split()[1:]:
        if word.startswith("--"):
            assert word in {o for p in command.params for o in getattr(p, "opts", [])}, (line, word)
        elif isinstance(command, click.Group) and word in command.list_commands(ctx):
            sub = command.get_command(ctx, word)
            assert sub is not None
            command, ctx = sub, click.Context(sub, parent=ctx, info_name=word)


def test_every_command_line_quoted_in_a_hint_uses_that_commands_options():
    quoted = [line for _path, text in source_hints() for line in QUOTED_COMMAND.findall(text)]
    assert any("--verbose" in line for line in quoted)  # the quantizer's: a group option, before the subcommand
    for line in quoted:
        check_quoted(line)


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


@pytest.fixture
def no_installed_bundles(tmp_path, monkeypatch) -> None:
    """Empty user and site folders (data, config): no bundle, no config file, no PACS names."""
    for var in ("XDG_DATA_HOME", "XDG_DATA_DIRS", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("HUATUO_MODEL", raising=False)


def assert_only_own_options(command: list[str], output: str) -> None:
    assert "Traceback" not in output and "Error:" in output, output
    assert error_options(output) <= command_options(command), output
    for line in QUOTED_COMMAND.findall(output):  # e.g. `huatuo finetune merge OUT MERGED --force`
        check_quoted(line)


@pytest.mark.parametrize("subcommand", ["info", "verify"])
def test_models_commands_take_the_bundle_as_an_argument_and_say_so(no_installed_bundles, tmp_path, subcommand):
    """`models info BUNDLE` has no --model: the error says where the bundle came from in its own terms."""
    res = CliRunner().invoke(cli, ["models", subcommand, str(tmp_path)])
    assert res.exit_code == 1 and "not a model bundle" in res.output
    assert "(from BUNDLE)" in res.output and "give the bundle folder as BUNDLE" in res.output
    assert_only_own_options(["models", subcommand], res.output)


def test_doctor_has_no_model_option_and_its_bundle_hint_names_none(no_installed_bundles):
    from huatuo_cli.doctor import bundle_checks

    (check,) = bundle_checks()
    assert check.status == "warn" and "no model bundle found" in check.detail
    assert check.data is not None and "HUATUO_MODEL" in check.data["hint"]
    assert set(OPTION.findall(QUOTED_COMMAND.sub("", check.data["hint"]))) <= command_options(["doctor"]), check.data


def test_ask_names_its_model_option(no_installed_bundles, tmp_path):
    res = CliRunner().invoke(cli, ["ask", "--model", str(tmp_path), str(tmp_path), "Describe."])
    assert res.exit_code == 1 and "(from --model)" in res.output and "pass --model BUNDLE" in res.output, res.output


@pytest.fixture
def fake_bundle(tmp_path) -> Path:
    """Enough for `find_bundle` (a manifest file): errors raised before the model loads."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.mark.parametrize("option,spec", [("--send", "not/a-destination"), ("--send", "unknown-pacs"),
                                         ("--from", "not/a-destination"), ("--from", "unknown-pacs")])
def test_batch_destination_errors_name_batchs_own_options(no_installed_bundles, fake_bundle, tmp_path, option, spec):
    """`batch --send/--from` resolve destinations like `send --to`: the messages name batch's option."""
    scans = tmp_path / "scans"
    scans.mkdir()
    source = ["--from", spec, "--study", "1.2.3"] if option == "--from" else [str(scans), "--sr", "--send", spec]
    res = CliRunner().invoke(cli, ["batch", *source, "--out", str(tmp_path / "run"), "-q", "Describe.",
                                   "--model", str(fake_bundle)])
    assert res.exit_code == 1, res.output
    assert f"{option} AET@HOST:PORT" in res.output or f"{option} ORTHANC@" in res.output, res.output
    assert_only_own_options(["batch"], res.output)


def test_finetune_merge_into_an_existing_folder_is_refused_before_training(make_checkpoint, tmp_path):
    """`finetune --merge MERGED` has no --force: an existing MERGED is refused before hours of training
    (it used to fail after them, with merge's 'pass --force')."""
    data = tmp_path / "train.jsonl"
    data.write_text("")
    (tmp_path / "merged").mkdir()
    res = CliRunner().invoke(cli, ["finetune", "--model", str(make_checkpoint()), "--data", str(data),
                                   "--out", str(tmp_path / "run"), "--merge", str(tmp_path / "merged")])
    assert res.exit_code == 2 and "already exists" in res.output, res.output
    assert not (tmp_path / "run").exists()
    assert_only_own_options(["finetune"], res.output)


@pytest.fixture(scope="module")
def pickle_checkpoint(make_checkpoint, tmp_path_factory) -> Path:
    import torch
    from safetensors.torch import load_file

    src = tmp_path_factory.mktemp("pickle") / "ckpt"
    shutil.copytree(make_checkpoint(shards=1), src)
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    return src


@pytest.mark.parametrize("command", [["convert", "gguf"], ["convert", "all"], ["convert", "mmproj"], ["convert", "vision"]])
def test_pickle_weights_hint_offers_allow_pickle_only_where_it_exists(pickle_checkpoint, tmp_path, command):
    out = tmp_path / ("out.gguf" if command[-1] in ("gguf", "mmproj") else "out")
    res = CliRunner().invoke(cli, [*command, str(pickle_checkpoint), str(out)])
    assert res.exit_code == 1 and "holds only pickle weights" in res.output, res.output
    assert_only_own_options(command, res.output)
    assert ("--allow-pickle" in res.output) == (command[-1] in ("gguf", "all"))  # offered where it exists
