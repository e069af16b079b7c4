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
