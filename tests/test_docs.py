"""The README and docs/ say what the code does: layout = the tree, examples use real options, and
docs/cli.md holds the current `--help` of every command (cog)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest

from huatuo_cli.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def layout_paths() -> list[str]:
    section = README.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [m.group(1).rstrip("/") for m in re.finditer(r"^\| `([^`]+)` \|", section, re.M)]


def test_readme_layout_is_the_tree():
    """Every path in README "Layout" exists; every top-level folder and every Python package is listed."""
    files = tracked()
    if not files:  # not a git checkout (an sdist): nothing to compare with
        pytest.fail("tests run from a git checkout")
    existing = set(files) | {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    listed = layout_paths()
    assert not [p for p in listed if p not in existing], "README Layout lists paths that do not exist"
    covered = set(listed) | {str(parent) for p in listed for parent in Path(p).parents}
    top_folders = {f.split("/")[0] for f in files if "/" in f} - covered
    packages = {str(Path(f).parent) for f in files if f.endswith("/__init__.py") and not f.startswith("tests/")}
    missing = sorted(top_folders | (packages - set(listed)))
    assert not missing, f"README Layout misses {missing}"


def _examples() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("huatuo "):
                lines.append(line)
    return lines


def _rest(ctx: click.Context) -> list[str]:
    """What a group left for its subcommand (click 8.2 deprecates `protected_args`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


@pytest.mark.parametrize("line", _examples())
def test_readme_examples_use_options_that_exist(line):
    """Each `huatuo ...` line of README's examples parses: its subcommands and options exist."""
    args = shlex.split(line.replace("$(", "(").replace("\\", ""))[1:]
    command: click.Command = cli
    ctx = command.make_context("huatuo", list(args))
    while isinstance(command, click.Group) and _rest(ctx):
        rest = _rest(ctx)
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"no command {rest[0]!r} in: {line}"
        command = sub
        try:  # options are parsed before values are checked: an unknown one raises first
            ctx = command.make_context(rest[0], rest[1:], parent=ctx)
        except click.NoSuchOption as exc:
            pytest.fail(f"{exc.format_message()} in README example: {line}")
        except click.UsageError:  # the example's files do not exist here; its options were all known
            return


def test_cli_reference_is_current():
    """docs/cli.md = the `--help` of every command now (regenerate: .venv/bin/cog -r docs/cli.md)."""
    proc = subprocess.run([sys.executable, "-m", "cogapp", "--check", "docs/cli.md"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\nrun: .venv/bin/cog -r docs/cli.md"


ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _architecture_names() -> list[str]:
    return re.findall(r"`([^`\s]+)`", ARCHITECTURE)


def test_architecture_names_the_tree():
    """docs/architecture.md: every path and module it names exists; every package of huatuo_cli/ and convert/
    is named there."""
    files = tracked()
    existing = set(files) | {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    roots = {f.split("/")[0] for f in files if "/" in f}
    names = _architecture_names()
    paths = {n.rstrip("/") for n in names if "/" in n and n.split("/")[0] in roots}
    assert not sorted(paths - existing), "docs/architecture.md names paths that do not exist"
    folder = {"huatuo_cli": "huatuo_cli", "huatuo_convert": "convert"}
    dotted = [n for n in names if n.split(".")[0] in folder and "." in n]
    gone = [n for n in dotted
            if not any(Path(ROOT, folder[n.split(".")[0]], *n.split(".")[1:k]).with_suffix(".py").is_file()
                       or (ROOT / folder[n.split(".")[0]] / Path(*n.split(".")[1:k]) / "__init__.py").is_file()
                       for k in range(2, n.count(".") + 2))]
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
    packages = {str(Path(f).parent) for f in files if f.endswith("/__init__.py") and f.split("/")[0] in ("huatuo_cli", "convert")}
    assert not sorted(packages - paths), "docs/architecture.md misses packages"


def test_architecture_layers_are_the_contract():
    """The table of docs/architecture.md "Layers of the runtime", row by row, is pyproject's layers contract."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    assert contract["containers"] == ["huatuo_cli"] and contract.get("exhaustive") is True
    contract_layers = [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]
    section = ARCHITECTURE.split("\n## Layers of the runtime\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ", 1)[0] for line in section.splitlines() if line.startswith("| `")]
    doc_layers = [{re.sub(r"^huatuo_cli/|\.py$|/$", "", p) for p in re.findall(r"`([^`]+)`", row)} for row in rows]
    assert doc_layers == contract_layers
