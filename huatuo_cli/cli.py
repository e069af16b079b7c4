"""The `huatuo` command line: one entry point, subcommands loaded lazily.

Subcommands live in the module that owns their job and are imported only when invoked, so
`huatuo --help` stays fast and the runtime never imports the server-side `huatuo_convert`
package (and with it torch) unless `huatuo convert ...` is run. `HuatuoError` is turned into a
one-line message on stderr here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import sys

import click

from huatuo_cli import __version__
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

#: subcommand name -> "module:attribute" of its click command
SUBCOMMANDS: dict[str, str] = {
    "convert": "huatuo_convert.cli:convert",
    "models": "huatuo_cli.models_cmd:models",
    "doctor": "huatuo_cli.doctor:doctor",
    "ask": "huatuo_cli.ask_cmd:ask",
    "batch": "huatuo_cli.batch.cmd:batch",
    "inspect": "huatuo_cli.imaging.inspect_cmd:inspect",
    "tui": "huatuo_cli.tui.cmd:tui",
}


class UserError(click.ClickException):
    """A HuatuoError as click reports it: 'Error: ...' on stderr, exit code 1."""

    def __init__(self, error: HuatuoError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use, and which converts user errors."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs) -> None:
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
            return getattr(module, attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HuatuoError as exc:
            raise UserError(exc) from exc


def _unavailable(name: str, error: HuatuoError) -> click.Command:
    """A stand-in for a subcommand whose extra is missing: listed in --help, explains itself when run."""

    def fail(**_kwargs) -> None:
        raise UserError(error)

    return click.Command(name, callback=fail, help=f"(unavailable: {error.hint or error})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=LazyGroup, lazy_subcommands=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="huatuo")
def cli() -> None:
    """huatuo: ask HuatuoGPT-Vision about medical images, fully offline.

    \b
    Examples:
      huatuo convert synth /tmp/tiny --arch llava-qwen2
      huatuo convert gguf /tmp/tiny /tmp/tiny.gguf --quant f16
      huatuo inspect ~/exports/ct-chest --window lung --png /tmp/preview
    """


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="huatuo"))


if __name__ == "__main__":
    main()
