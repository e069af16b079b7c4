"""transformers' Qwen2.5-VL layout (`Qwen2_5_VLForConditionalGeneration`), read as one view.

HuatuoGPT-Vision-7B-Qwen2.5VL is a plain transformers Qwen2.5-VL checkpoint. Two generations of
files exist and both are read here into one view, so that the converters see one kind of checkpoint:

- the config: transformers 4.x (2025 checkpoints) states the language model's fields at the top
  level with `rope_theta` and `rope_scaling.mrope_section`; 5.x nests them in `text_config` with
  `rope_parameters`. transformers' own `Qwen2_5_VLConfig` reads either (as `from_pretrained` does);
  its `text_config` is flattened to the top level of the view, `mrope_section` and `rope_theta`
  stated there, `vision_config` kept as a dict;
- the tensors: the language model as `model.layers.*`, `model.embed_tokens.weight`,
  `model.norm.weight`, `lm_head.weight` and the tower as `visual.*`, whether stored so (4.x, and
  5.x's save_pretrained) or as `model.language_model.*` / `model.visual.*` (4.52+ in memory).

Anything else (another architecture's tensors, two stored names for one weight, a missing part) is
a HuatuoError naming what was found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import QWEN_LAYOUT, QWEN_VISUAL_PREFIX, TensorFiles
from huatuo_convert.llava_hf import RenamedTensorFiles, stored_names

#: `architectures[0]` and `model_type` of the layout
HF_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
LAYOUT = QWEN_LAYOUT
#: where the tower's tensors are in the view
VISUAL_PREFIX = QWEN_VISUAL_PREFIX
#: top-level keys carried into the view as they are
CARRIED_KEYS = ("huatuo_synthetic", "image_token_id", "video_token_id", "vision_start_token_id",
                "vision_end_token_id", "transformers_version")
#: stored prefix -> view prefix, first match wins
_RENAMES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "model."),
    ("model.visual.", VISUAL_PREFIX),
    (VISUAL_PREFIX, VISUAL_PREFIX),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
)


def is_qwen_vl_config(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return (archs[0] == HF_ARCHITECTURE) if archs else config.get("model_type") == "qwen2_5_vl"


def normalise_config(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """The view: text fields at the top level with `rope_theta` and `mrope_section`, `vision_config`."""
    transformers = require("transformers")
    try:  # what from_pretrained sees, from either generation's keys
        full = transformers.Qwen2_5_VLConfig(**raw).to_dict()
    except Exception as exc:  # noqa: BLE001 - a config transformers rejects is the user's file
        raise HuatuoError(f"{config_path} is not a valid Qwen2.5-VL config for transformers {transformers.__version__}: {exc}",
                          hint="fix the file or copy it again from the original checkpoint") from None
    text = full.get("text_config") or {}
    rope = {**(raw.get("rope_scaling") or {}), **(text.get("rope_parameters") or {})}
    section = rope.get("mrope_section")
    if not (isinstance(section, list) and len(section) == 3 and all(isinstance(x, int) and x > 0 for x in section)):
        raise HuatuoError(f"{config_path}: no M-RoPE sections (rope_scaling.mrope_section or "
                          f"text_config.rope_parameters.mrope_section), found {section!r}",
                          hint="a Qwen2.5-VL config states three sections, e.g. [16, 24, 24]")
    head_dim = int(text["hidden_size"]) // int(text["num_attention_heads"])
    if 2 * sum(section) != head_dim:
        raise HuatuoError(f"{config_path}: M-RoPE sections {section} do not split the head dimension {head_dim}")
    view = {k: v for k, v in text.items() if v is not None and k not in (
        "architectures", "model_type", "_name_or_path", "rope_parameters", "layer_types")}
    view.update({
        "architectures": [HF_ARCHITECTURE],
        "model_type": "qwen2_5_vl",
        "rope_theta": float(rope.get("rope_theta", raw.get("rope_theta", 1000000.0))),
        "mrope_section": list(section),
        "tie_word_embeddings": bool(full.get("tie_word_embeddings") or text.get("tie_word_embeddings")),
        "vision_config": full.get("vision_config") or {},
    })
    view.update({key: raw[key] for key in CARRIED_KEYS if key in raw})
    return view


def view_name(stored: str) -> str | None:
    for prefix, target in _RENAMES:
        if stored.startswith(prefix):
            return target + stored[len(prefix):]
    return None


def rename_tensors(tensors: TensorFiles, root: Path) -> RenamedTensorFiles:
    """The checkpoint's tensors under the view's names; refuses unknown and doubly stored tensors and
    a checkpoint without its language model or tower."""
    stored, unknown = stored_names(tensors, root, view_name)
    if unknown:
        raise HuatuoError(f"{root}: {len(unknown)} tensor(s) have no place in a {HF_ARCHITECTURE} checkpoint: "
                          f"{', '.join(sorted(unknown)[:5])}",
                          hint="expected model.layers.*, model.embed_tokens, model.norm, lm_head, visual.* "
                               "(or model.language_model.* and model.visual.*)")
    llm = sum(1 for v in stored if v.startswith("model.layers."))
    tower = sum(1 for v in stored if v.startswith(VISUAL_PREFIX))
    if not llm or not tower:
        raise HuatuoError(f"{root}: no tensors of the {'language model' if not llm else 'vision tower'} in this "
                          f"{HF_ARCHITECTURE} checkpoint (found {llm} language-model and {tower} tower tensors)",
                          hint="copy every safetensors shard the index names")
    return RenamedTensorFiles(tensors, stored)


def visual_state_dict(tensors: TensorFiles) -> dict[str, Any]:
    """The tower's weights as `Qwen2_5_VisionTransformerPretrainedModel` state-dict entries."""
    return {name[len(VISUAL_PREFIX):]: tensors.get(name) for name in tensors.names() if name.startswith(VISUAL_PREFIX)}
