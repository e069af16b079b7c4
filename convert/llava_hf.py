"""transformers' own LLaVA layout (`LlavaForConditionalGeneration`), read as the original one.

FreedomIntelligence publishes HuatuoGPT-Vision-7B-hf and -34B-hf beside the original checkpoints:
the same models stored as transformers' `LlavaForConditionalGeneration` (docs/model.md, "What is
known of the published checkpoints' files"). `LlavaCheckpoint.open` recognises that layout here and
presents the same view as the original layout, so that nothing downstream changes:

- the config: `text_config` (with transformers' defaults for what it leaves out, as
  `from_pretrained` would see it) flattened to the top level, the `mm_*` keys of LLaVA-1.5 derived
  from `vision_feature_layer`, `vision_feature_select_strategy` and `projector_hidden_act`, and the
  original architecture and model type of the family whose language model it holds
  (`huatuo_convert.families`);
- the tensors: stored names mapped onto the original ones (`model.layers.*`, `lm_head.weight`,
  `model.mm_projector.0/2.*`, `model.vision_tower.vision_tower.vision_model.*`), for transformers
  4.x's keys (`language_model.model.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`)
  and for those of 4.52+ and 5.x (`model.language_model.*`, `model.vision_tower.*`,
  `model.multi_modal_projector.*`, `lm_head.weight`; 5.x's CLIP tower drops `vision_model.`);
- the CLIP tower's configuration from `vision_config` (the original embedded layout has none).

Anything this layout can hold that HuatuoGPT-Vision is not (another text or vision model, another
projector, several feature layers, tensors with no place) is a HuatuoError naming what was found.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import BARE_TOWER_ROOTS, EMBEDDED_TOWER_PREFIX, PROJECTOR_PREFIX, TensorFiles
from huatuo_convert.families import all_families, family_for_text_model

#: `architectures[0]` of transformers' LLaVA checkpoints
HF_ARCHITECTURE = "LlavaForConditionalGeneration"
#: `LlavaCheckpoint.layout` of each layout (also the manifest's `source.layout`)
LAYOUT_ORIGINAL = "llava"
LAYOUT_HF = "llava-hf"
#: text_config.model_type when the config leaves it out (LlavaConfig's default text model)
DEFAULT_TEXT_MODEL = "llama"
VISION_MODEL = "clip_vision_model"
#: vision_feature_select_strategy -> mm_vision_select_feature (transformers' "default" drops the CLS token)
SELECT_FEATURE = {"default": "patch", "full": "cls_patch"}
#: projector_hidden_act -> mm_projector_type (transformers' "gelu" is the exact GELU of mlp2x_gelu)
PROJECTOR_TYPE = {"gelu": "mlp2x_gelu"}
#: top-level keys kept in the view as they are (huatuo_synthetic: `huatuo convert synth --layout hf`)
CARRIED_KEYS = ("huatuo_synthetic", "image_token_index", "transformers_version")
#: stored prefix -> view prefix, first match wins (a 5.x tower prefix needs a CLIP root after it)
_RENAMES: tuple[tuple[str, str], ...] = (
    ("language_model.model.", "model."),  # transformers 4.x
    ("language_model.lm_head.", "lm_head."),
    ("multi_modal_projector.linear_1.", PROJECTOR_PREFIX + "0."),
    ("multi_modal_projector.linear_2.", PROJECTOR_PREFIX + "2."),
    ("vision_tower.vision_model.", EMBEDDED_TOWER_PREFIX + "vision_model."),
    ("model.language_model.", "model."),  # transformers >= 4.52 and 5.x
    ("lm_head.", "lm_head."),
    ("model.multi_modal_projector.linear_1.", PROJECTOR_PREFIX + "0."),
    ("model.multi_modal_projector.linear_2.", PROJECTOR_PREFIX + "2."),
    ("model.vision_tower.vision_model.", EMBEDDED_TOWER_PREFIX + "vision_model."),
    ("model.vision_tower.", EMBEDDED_TOWER_PREFIX + "vision_model."),  # 5.x: CLIPVisionModel without vision_model.
)
_BARE_TOWER = "model.vision_tower."


def is_hf_config(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return (archs[0] == HF_ARCHITECTURE) if archs else config.get("model_type") == "llava"


def _refuse(config_path: Path, what: str, hint: str) -> HuatuoError:
    return HuatuoError(f"{config_path} is a transformers LLaVA checkpoint ({HF_ARCHITECTURE}) with {what}", hint=hint)


def normalise_config(raw: dict[str, Any], config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the original layout's config, CLIPVisionConfig fields) of a `LlavaForConditionalGeneration` config."""
    text_type = (raw.get("text_config") or {}).get("model_type", DEFAULT_TEXT_MODEL)
    family = family_for_text_model(text_type)
    if family is None:
        known = " or ".join(f.text_model_type for f in all_families())
        raise _refuse(config_path, f"a {text_type} language model (text_config.model_type)",
                      f"HuatuoGPT-Vision's -hf checkpoints have text_config.model_type {known}")
    vision_type = (raw.get("vision_config") or {}).get("model_type", VISION_MODEL)
    if vision_type != VISION_MODEL:
        raise _refuse(config_path, f"a {vision_type} vision tower (vision_config.model_type)",
                      f"huatuo converts CLIP towers ({VISION_MODEL}), as HuatuoGPT-Vision has")
    act = raw.get("projector_hidden_act", "gelu")
    if act not in PROJECTOR_TYPE or raw.get("multimodal_projector_bias", True) is not True:
        raise _refuse(config_path, f"a projector of activation {act!r} and bias {raw.get('multimodal_projector_bias', True)!r}",
                      "HuatuoGPT-Vision's projector is Linear, exact GELU, Linear, with biases (mlp2x_gelu)")
    layer = raw.get("vision_feature_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise _refuse(config_path, f"vision_feature_layer {layer!r}", "HuatuoGPT-Vision takes the features of one layer (-2)")
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in SELECT_FEATURE:
        raise _refuse(config_path, f"vision_feature_select_strategy {strategy!r}", f"one of {', '.join(SELECT_FEATURE)}")
    transformers = require("transformers")
    try:  # what from_pretrained sees: transformers' defaults for every key a sub-config leaves out
        full = transformers.LlavaConfig(**raw).to_dict()
    except Exception as exc:  # any refusal: a config transformers rejects is the user's file, not our bug
        raise HuatuoError(f"{config_path} is not a valid LLaVA config for transformers {transformers.__version__}: {exc}",
                          hint="fix the file or copy it again from the original checkpoint") from None
    text, vision = full["text_config"], full["vision_config"]
    view = {k: v for k, v in text.items() if v is not None and k not in ("architectures", "model_type", "_name_or_path")}
    view.update({
        "architectures": [family.hf_architecture],
        "model_type": family.model_type,
        "tie_word_embeddings": bool(full.get("tie_word_embeddings") or text.get("tie_word_embeddings")),
        "mm_projector_type": PROJECTOR_TYPE[act],
        "mm_hidden_size": vision["hidden_size"],
        "mm_vision_select_layer": layer,
        "mm_vision_select_feature": SELECT_FEATURE[strategy],
        # Not in this layout (transformers' processor centre-crops); the model is the same, and the
        # original configs say pad: huatuo preprocesses as the model was trained (docs/model.md).
        "image_aspect_ratio": "pad",
    })
    view.update({key: raw[key] for key in CARRIED_KEYS if key in raw})
    return view, vision


class RenamedTensorFiles(TensorFiles):
    """Another TensorFiles seen under other names (view name -> stored name)."""

    def __init__(self, inner: TensorFiles, stored: dict[str, str]) -> None:
        super().__init__({view: inner.files[name] for view, name in stored.items()})
        self.inner, self.stored = inner, stored

    def get(self, name: str):
        return self.inner.get(self.stored[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(self.stored[name])

    def get_rows(self, name: str, start: int, stop: int):
        return self.inner.get_rows(self.stored[name], start, stop)


def view_name(stored: str) -> str | None:
    """The original layout's name of a stored -hf tensor name, or None when it has no place."""
    for prefix, target in _RENAMES:
        if stored.startswith(prefix):
            rest = stored[len(prefix):]
            if prefix == _BARE_TOWER and rest.split(".")[0] not in BARE_TOWER_ROOTS:
                return None
            return target + rest
    return None


def stored_names(tensors: TensorFiles, root: Path, view_of: Callable[[str], str | None]) -> tuple[dict[str, str], list[str]]:
    """(view name -> stored name, stored names with no place) of a checkpoint read as another layout's
    view (`view_of`: None where a name has no place); two stored names for one view name are refused."""
    stored: dict[str, str] = {}
    unknown: list[str] = []
    for name in tensors.names():
        view = view_of(name)
        if view is None:
            unknown.append(name)
        elif view in stored:
            raise HuatuoError(f"{root}: tensors {stored[view]} and {name} are the same weight stored twice",
                              hint="a checkpoint mixes transformers 4.x and 5.x key names; keep one set of shards")
        else:
            stored[view] = name
    return stored, unknown


def rename_tensors(tensors: TensorFiles, root: Path) -> RenamedTensorFiles:
    """The -hf checkpoint's tensors under the original names; refuses tensors with no place, two
    stored names for one tensor, and a checkpoint that lacks the language model, projector or tower."""
    stored, unknown = stored_names(tensors, root, view_name)
    if unknown:
        raise HuatuoError(f"{root}: {len(unknown)} tensor(s) have no place in a {HF_ARCHITECTURE} HuatuoGPT-Vision "
                          f"checkpoint: {', '.join(sorted(unknown)[:5])}",
                          hint="expected language_model.*, multi_modal_projector.linear_1/2.*, vision_tower.* "
                               "(or model.language_model.* ... and lm_head.weight, as transformers >= 4.52 saves them)")
    counts = {
        "language model (language_model.*)": sum(1 for v in stored if v.startswith("model.") and not v.startswith(
            (PROJECTOR_PREFIX, EMBEDDED_TOWER_PREFIX))),
        "projector (multi_modal_projector.linear_1/2.*)": sum(1 for v in stored if v.startswith(PROJECTOR_PREFIX)),
        "vision tower (vision_tower.*)": sum(1 for v in stored if v.startswith(EMBEDDED_TOWER_PREFIX)),
    }
    missing = [part for part, n in counts.items() if n == 0]
    if missing:
        found = ", ".join(f"{part}: {n}" for part, n in counts.items())
        raise HuatuoError(f"{root}: no tensors of the {' or the '.join(missing)} in this {HF_ARCHITECTURE} checkpoint "
                          f"(found {found})", hint="copy every safetensors shard the index names")
    return RenamedTensorFiles(tensors, stored)
