"""Where the model bundle comes from: --model, then HUATUO_MODEL, then the config file, then the
default models folders. One place decides, so `ask`, `batch`, the TUI and `doctor` agree.

Each of these may name a bundle folder (a path: always that bundle) or, in the manner of Ollama, a
model installed in the models folders: `NAME` or `NAME:TAG`. A bundle's model name is its folder's
name without the `-<quantization>` suffix (`huatuogpt-vision-7b-q8_0` is `huatuogpt-vision-7b:q8_0`);
its tag is its manifest's quantization. `NAME:TAG` is that bundle; `NAME` alone, where several
quantizations of one checkpoint (same source config hash) are installed, is the one the caller's
`choose` picks (`engine.quant_probe`: the one measured fastest on this CPU).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (pyproject.toml: tomli>=2; python_version < '3.11')
    import tomli as tomllib

import platformdirs

from huatuo_cli import APP_NAME as APP
from huatuo_cli.bundles.bundle import MANIFEST_NAME, read_manifest
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


@dataclass(frozen=True)
class Installed:
    """An installed bundle as a model: `name:tag`, and which checkpoint it was made from."""

    path: Path
    name: str
    tag: str  # the manifest's quantization, lower case
    source: str  # the source config's sha256: bundles of one checkpoint share it

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


def as_model(path: Path) -> Installed | None:
    """`path` as NAME:TAG (None: its manifest cannot be read; `models list` and `doctor` say why)."""
    try:
        manifest, _ = read_manifest(path)
    except HuatuoError:
        return None
    tag = manifest.quantization.lower()
    name = path.name
    for sep in ("-", "_", "."):
        if name.lower().endswith(sep + tag) and len(name) > len(tag) + 1:
            name = name[: -len(tag) - 1]
            break
    return Installed(path, name, tag, str(manifest.source.get("config_sha256", "")))


def installed_models() -> list[Installed]:
    return [m for m in (as_model(p) for p in installed_bundles()) if m is not None]


#: picks one of several installed quantizations of one checkpoint (engine.quant_probe.fastest)
Chooser = Callable[[list[Path]], Path]


def _by_name(ref: str, choose: Chooser | None, origin: str) -> Path | None:
    """The installed bundle that `ref` (NAME or NAME:TAG) names; None where no model has that name."""
    name, _, tag = ref.partition(":")
    same_name = [m for m in installed_models() if m.name == name]
    if not same_name:
        return None
    if tag:
        match = [m for m in same_name if m.tag == tag.lower()]
        if not match:
            tags = ", ".join(sorted(m.ref for m in same_name))
            raise HuatuoError(f"model {name} has no tag {tag} installed (from {origin})", hint=f"installed: {tags}")
        return match[0].path
    if len(same_name) == 1:
        return same_name[0].path
    return _one_of(name, same_name, choose)


def _one_of(name: str, models: list[Installed], choose: Chooser | None) -> Path:
    refs = ", ".join(sorted(m.ref for m in models))
    if len({m.source for m in models}) > 1:
        raise HuatuoError(f"{name} names bundles of different checkpoints ({refs}); choose one",
                          hint="name a bundle folder, or rename one of them")
    if choose is None:
        raise HuatuoError(f"several quantizations of {name} are installed ({refs}); choose one", hint=f"name one: {refs}")
    return choose([m.path for m in models])


def find_bundle(explicit: str | os.PathLike[str] | None = None, *, option: str | None = "--model",
                choose: Chooser | None = None) -> Path:
    """The bundle folder to use, or a HuatuoError that says how to get one.

    `option`: how the calling command takes a bundle (`--model`; `BUNDLE` for an argument; None
    where it takes none, as `doctor`): the messages name only that, never another command's option.
    `choose`: picks among several installed quantizations of one model named without a tag (or of
    the only model installed); without it, the user is asked to name one.
    """
    for candidate, origin in ((explicit, option or "the command line"), (os.environ.get(ENV_MODEL), ENV_MODEL),
                              (_configured_model(), str(config_file()))):
        if candidate:
            path = Path(candidate).expanduser()
            if (path / MANIFEST_NAME).is_file():  # a path always wins
                return path
            text = str(candidate)
            if "/" not in text and os.sep not in text and not text.startswith((".", "~")):
                found = _by_name(text, choose, origin)
                if found is not None:
                    return found
            raise HuatuoError(f"{path} (from {origin}) is not a model bundle: no {MANIFEST_NAME}",
                              hint=_hint(option))
    bundles = installed_bundles()
    if len(bundles) == 1:
        return bundles[0]
    if len(bundles) > 1:
        models = installed_models()
        if len(models) == len(bundles) and len({m.name for m in models}) == 1:  # one model, several tags
            return _one_of(models[0].name, models, choose)
        names = ", ".join(str(b) for b in bundles)
        raise HuatuoError(f"several model bundles are installed ({names}); choose one",
                          hint=f"{_choose(option)}set {ENV_MODEL}, or put `model = \"...\"` in {config_file()}")
    raise HuatuoError("no model bundle found", hint=_hint(option))


def _choose(option: str | None) -> str:
    """'pass --model BUNDLE, ': how to name a bundle on the calling command ('' where it has no way)."""
    if option is None:
        return ""
    return f"pass {option} BUNDLE (or NAME:TAG), " if option.startswith("--") else f"give the bundle folder as {option}, "


def _hint(option: str | None) -> str:
    user, site = models_dirs()
    return INSTALL_HINT.format(user=user, site=site, choose=_choose(option))
