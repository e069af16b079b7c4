"""The `huatuo` command line: one entry point, subcommands loaded lazily.

Subcommands live in the module that owns their job and are imported only when invoked, so
`huatuo --help` stays fast and the runtime never imports the server-side `huatuo_convert`
package (and with it torch) unless `huatuo convert ...` is run. `HuatuoError` is turned into a
one-line message on stderr here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from huatuo_cli import __version__
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

#: subcommand name -> "module:attribute" of its click command
SUBCOMMANDS: dict[str, str] = {
    "convert": "huatuo_convert.commands.convert_cmd:convert",
    "finetune": "huatuo_convert.commands.finetune_cmd:finetune",
    "models": "huatuo_cli.commands.models_cmd:models",
    "doctor": "huatuo_cli.commands.doctor_cmd:doctor",
    "ask": "huatuo_cli.commands.ask_cmd:ask",
    "batch": "huatuo_cli.commands.batch_cmd:batch",
    "inspect": "huatuo_cli.commands.inspect_cmd:inspect",
    "send": "huatuo_cli.commands.send_cmd:send",
    "serve": "huatuo_cli.commands.serve_cmd:serve",
    "tui": "huatuo_cli.commands.tui_cmd:tui",
    "eval": "huatuo_cli.commands.eval_cmd:eval",
}


class UserError(click.ClickException):
    """A HuatuoError as click reports it: 'Error: ...' on stderr, exit code 1."""

    def __init__(self, error: HuatuoError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code  # type: ignore[misc]  # click declares it on the class


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use, and which converts user errors."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_subcommands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module_name, attr = self.lazy_subcommands[cmd_name].split(":")
            try:
                module = require(module_name)
            except HuatuoError as exc:
                return _unavailable(cmd_name, exc)
            command: click.Command = getattr(module, attr)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HuatuoError as exc:
            raise UserError(exc) from exc


def _unavailable(name: str, error: HuatuoError) -> click.Command:
    """A stand-in for a subcommand whose extra is missing: listed in --help, explains itself when run."""

    def fail(**_kwargs: Any) -> None:
        raise UserError(error)

    return click.Command(name, callback=fail, help=f"(unavailable: {error.hint or error})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=LazyGroup, lazy_subcommands=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="huatuo")
@click.option("-v", "--verbose", is_flag=True, help="Also show library logs (llama.cpp, ...) on stderr.")
def cli(verbose: bool) -> None:
    """huatuo: ask HuatuoGPT-Vision about medical images, fully offline.

    \b
    Examples:
      huatuo convert synth /tmp/tiny
      huatuo convert gguf /tmp/tiny /tmp/tiny.gguf --quant f16
      huatuo inspect ~/exports/ct-chest --window lung --png /tmp/preview
    """
    from huatuo_cli.imaging.dicomio import configure_pydicom
    from huatuo_cli.logs import setup

    configure_pydicom()  # start-up, explicitly: no PHI in pydicom's warnings (see there)
    setup(verbose)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="huatuo"))


if __name__ == "__main__":
    main()
