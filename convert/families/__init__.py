"""The model families huatuo converts: one module per family, found here by discovery.

Every module of this package other than `base` defines `FAMILY` (a `base.ModelFamily`); nothing
outside the family modules tests a family's name. Lookups raise a HuatuoError naming the
supported ones, so an unknown checkpoint is one clear line.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from huatuo_cli.errors import HuatuoError
from huatuo_convert.families.base import ModelFamily


@cache
def all_families() -> tuple[ModelFamily, ...]:
    """Every registered family, the default first, then by name."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, ModelFamily):
            raise TypeError(f"{module.__name__} defines no FAMILY (a ModelFamily)")
        found.append(family)
    names = [f.name for f in found]
    if len(set(names)) != len(names) or sum(f.default for f in found) != 1:
        raise TypeError(f"families must have distinct names and exactly one default: {names}")
    return tuple(sorted(found, key=lambda f: (not f.default, f.name)))


def family_names() -> list[str]:
    return [f.name for f in all_families()]


def default_family() -> ModelFamily:
    return all_families()[0]


def family_named(name: str) -> ModelFamily:
    """The family whose huatuo id is `name` (`convert synth --arch`, a manifest's `architecture`)."""
    for family in all_families():
        if family.name == name:
            return family
    raise HuatuoError(f"unknown architecture '{name}'", hint=f"one of {', '.join(family_names())}")


def family_for_architecture(hf_architecture: str) -> ModelFamily:
    """The family converting config.json's `architectures[0]` (with vision, or the language model alone)."""
    for family in all_families():
        if hf_architecture in family.architectures:
            return family
    supported = ", ".join(a for f in all_families() for a in f.architectures)
    raise HuatuoError(f"unknown architecture {hf_architecture}",
                      hint=f"supported: {supported}, and LlavaForConditionalGeneration (the -hf layout) of these")


def family_for_text_model(model_type: str) -> ModelFamily | None:
    """The family whose language model has `model_type` (`text_config.model_type` of the -hf layout)."""
    return next((f for f in all_families() if f.text_model_type == model_type), None)
