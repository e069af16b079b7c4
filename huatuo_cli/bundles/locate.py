"""Where the model bundle comes from: --model, then HUATUO_MODEL, then the config file, then the
default models folders. One place decides, so `ask`, `batch`, the TUI and `doctor` agree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (pyproject.toml: tomli>=2; python_version < '3.11')
    import tomli as tomllib

import platformdirs

from huatuo_cli import APP_NAME as APP
from huatuo_cli.bundles.bundle import MANIFEST_NAME
from huatuo_cli.errors import HuatuoError

ENV_MODEL = "HUATUO_MODEL"
INSTALL_HINT = (
    "make a bundle on the conversion server with `huatuo convert all SRC OUT`, then copy it to "
    "{user} (or {site} for all users), or {choose}set HUATUO_MODEL"
)


def config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def models_dirs() -> list[Path]:
    """Default bundle folders: the user's, then the machine-wide one the installer fills."""
    return [Path(platformdirs.user_data_dir(APP)) / "models", Path(platformdirs.site_data_dir(APP)) / "models"]


def installed_bundles() -> list[Path]:
    """Every folder with a manifest.json directly under a default models folder, sorted by name."""
    found: list[Path] = []
    for folder in models_dirs():
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file()))
    return found


def _configured_model() -> str | None:
    path = config_file()
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HuatuoError(f"config file {path} is not valid TOML: {exc}") from exc
    model = data.get("model")
    return str(model) if model else None


def find_bundle(explicit: str | os.PathLike[str] | None = None, *, option: str | None = "--model") -> Path:
    """The bundle folder to use, or a HuatuoError that says how to get one.

    `option`: how the calling command takes a bundle (`--model`; `BUNDLE` for an argument; None
    where it takes none, as `doctor`): the messages name only that, never another command's option.
    """
    for candidate, origin in ((explicit, option or "the command line"), (os.environ.get(ENV_MODEL), ENV_MODEL),
                              (_configured_model(), str(config_file()))):
        if candidate:
            path = Path(candidate).expanduser()
            if not (path / MANIFEST_NAME).is_file():
                raise HuatuoError(f"{path} (from {origin}) is not a model bundle: no {MANIFEST_NAME}",
                                  hint=_hint(option))
            return path
    bundles = installed_bundles()
    if len(bundles) == 1:
        return bundles[0]
    if len(bundles) > 1:
        names = ", ".join(str(b) for b in bundles)
        raise HuatuoError(f"several model bundles are installed ({names}); choose one",
                          hint=f"{_choose(option)}set {ENV_MODEL}, or put `model = \"...\"` in {config_file()}")
    raise HuatuoError("no model bundle found", hint=_hint(option))


def _choose(option: str | None) -> str:
    """'pass --model BUNDLE, ': how to name a bundle on the calling command ('' where it has no way)."""
    if option is None:
        return ""
    return f"pass {option} BUNDLE, " if option.startswith("--") else f"give the bundle folder as {option}, "


def _hint(option: str | None) -> str:
    user, site = models_dirs()
    return INSTALL_HINT.format(user=user, site=site, choose=_choose(option))
