"""The workstation runtime never imports torch, transformers or huatuo_convert at module level."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "huatuo_convert", "optimum", "peft", "safetensors")
SERVER_ONLY = ("torch", "transformers", "optimum", "peft", "safetensors", "sentencepiece", "onnx")


def test_every_runtime_module_imports_without_heavy_packages():
    code = (
        "import importlib, pkgutil, sys, huatuo_cli\n"
        "names = [m.name for m in pkgutil.walk_packages(huatuo_cli.__path__, 'huatuo_cli.') if m.name != 'huatuo_cli.__main__']\n"
        "for name in names: importlib.import_module(name)\n"
        f"bad = set({HEAVY!r}) & set(sys.modules)\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert int(out.stdout) > 20  # the walk really found the runtime's modules


def run_without(blocked: tuple[str, ...], body: str) -> None:
    code = "import sys\n" f"for name in {blocked!r}: sys.modules[name] = None\n" + body  # importing them raises
    subprocess.run([sys.executable, "-c", code], check=True)


def test_workstation_commands_without_server_packages(tmp_path):
    """A workstation install: every command's help works; a convert command names the extra to install."""
    run_without(SERVER_ONLY, (
        "from click.testing import CliRunner\n"
        "from huatuo_cli.cli import cli\n"
        "for args in (['--help'], ['ask', '--help'], ['batch', '--help'], ['inspect', '--help'],\n"
        "             ['models', '--help'], ['doctor', '--help']):\n"
        "    res = CliRunner().invoke(cli, args)\n"
        "    assert res.exit_code == 0, (args, res.output)\n"
        f"res = CliRunner().invoke(cli, ['convert', 'synth', {str(tmp_path / 'never')!r}])\n"
        "assert res.exit_code == 1 and \"huatuo-cli[convert]\" in res.output, res.output\n"
        "assert 'Traceback' not in res.output\n"
        f"import os; assert not os.path.exists({str(tmp_path / 'never')!r}), 'a failed command left output behind'\n"
    ))


def test_help_survives_an_unloadable_convert_package():
    run_without(("huatuo_convert",), (
        "from click.testing import CliRunner\n"
        "from huatuo_cli.cli import cli\n"
        "res = CliRunner().invoke(cli, ['--help'])\n"
        "assert res.exit_code == 0 and 'unavailable' in res.output, res.output\n"
        "res = CliRunner().invoke(cli, ['convert', 'all', 'a', 'b'])\n"
        "assert res.exit_code == 1 and \"huatuo-cli[convert]\" in res.output, res.output\n"
    ))


TUI_ONLY = ("textual", "textual_image")


def test_only_the_tui_package_imports_textual():
    """The core (everything outside huatuo_cli/tui) never imports textual; neither does `huatuo
    --help` nor `huatuo tui --help`: textual loads only when the app runs."""
    code = (
        "import importlib, pkgutil, sys, huatuo_cli\n"
        "from pathlib import Path\n"
        "def walk(path, prefix):\n"
        "    for m in pkgutil.iter_modules(path, prefix):\n"
        "        if m.name == 'huatuo_cli.tui' or m.name == 'huatuo_cli.__main__':\n"
        "            continue\n"
        "        yield m.name\n"
        "        if m.ispkg:\n"
        "            yield from walk([str(Path(path[0]) / m.name.rsplit('.', 1)[1])], m.name + '.')\n"
        "names = list(walk(huatuo_cli.__path__, 'huatuo_cli.'))\n"
        "for name in names: importlib.import_module(name)\n"
        f"bad = set({TUI_ONLY!r}) & set(sys.modules)\n"
        "assert not bad, bad\n"
        "from click.testing import CliRunner\n"
        "from huatuo_cli.cli import cli\n"
        "for args in (['--help'], ['tui', '--help']):\n"
        "    res = CliRunner().invoke(cli, args)\n"
        "    assert res.exit_code == 0, res.output\n"
        f"bad = set({TUI_ONLY!r}) & set(sys.modules)\n"
        "assert not bad, ('--help', bad)\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert int(out.stdout) > 20 and "huatuo_cli.tui" not in out.stdout


def test_every_package_folder_is_installed():
    """pyproject lists packages by hand (`convert/` installs as `huatuo_convert`): a package folder
    missing from the list would work in the editable checkout and be absent from the wheel."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    for name, folder in setuptools["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            package = ".".join([name, *init.parent.relative_to(root / folder).parts])
            assert package in listed, f"{package} ({init.parent.relative_to(root)}) is not in pyproject's packages"


def test_ray_only_with_batch_ray(tmp_path):
    """No runtime module imports ray at module level, `huatuo batch` without --ray never imports it,
    and --ray without the `cluster` extra is a clear message naming it."""
    code = (
        "import importlib, pkgutil, sys, huatuo_cli\n"
        "names = [m.name for m in pkgutil.walk_packages(huatuo_cli.__path__, 'huatuo_cli.') if m.name != 'huatuo_cli.__main__']\n"
        "for name in names: importlib.import_module(name)\n"
        "assert 'ray' not in sys.modules, 'imported at module level'\n"
        "from click.testing import CliRunner\n"
        "from huatuo_cli.cli import cli\n"
        "from tests.batch_helpers import sample_folder\n"
        "from pathlib import Path\n"
        f"root = sample_folder(Path({str(tmp_path / 'studies')!r}))\n"
        f"args = ['batch', str(root), '--out', {str(tmp_path / 'out')!r}, '-q', 'Describe.']\n"
        f"res = CliRunner().invoke(cli, args + ['--model', {str(tmp_path / 'none')!r}])\n"
        "assert 'ray' not in sys.modules, ('batch without --ray', res.output)\n"
        "import huatuo_cli.extras as extras, huatuo_cli.errors as errors\n"
        "sys.modules['ray'] = None\n"
        "try:\n"
        "    extras.require('ray')\n"
        "except errors.HuatuoError as exc:\n"
        "    assert \"huatuo-cli[cluster]\" in exc.hint, exc.hint\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
