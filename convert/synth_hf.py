"""Rewrite a checkpoint of the original LLaVA-1.5 layout as transformers' `LlavaForConditionalGeneration`
stores it: the layout of FreedomIntelligence's HuatuoGPT-Vision-7B-hf / -34B-hf (docs/model.md).

Used by `huatuo convert synth --layout hf|hf-v5` and the tests: the same weights in the other layout
must convert to the same bundle. What is written follows transformers' own code (`LlavaConfig`,
`LlavaForConditionalGeneration`'s module names, `convert_llava_weights_to_hf.py`'s key mapping):

- config.json: `architectures: [LlavaForConditionalGeneration]`, `model_type: llava`, the language
  model's keys under `text_config` (the family's text model type), the CLIP tower's under
  `vision_config`, `vision_feature_layer`, `vision_feature_select_strategy: default`,
  `projector_hidden_act: gelu`, `image_token_index`;
- tensors with transformers 4.x's names (`language_model.model.*`, `language_model.lm_head.weight`,
  `vision_tower.vision_model.*`, `multi_modal_projector.linear_1/2.*`) or, for `hf-v5`, those of
  transformers >= 4.52 and 5.x (`model.language_model.*`, `lm_head.weight`, `model.vision_tower.*`
  without `vision_model.`, `model.multi_modal_projector.*`), in as many shards as the source had;
- the tokenizer with `<image>` as an added special token at the first id past its vocabulary, as
  transformers' conversion adds it. Where the embedding has no row for it (a family whose rows are
  exactly its tokens) rows are appended up to a multiple of 64 (as the conversion pads): embedding
  rows the mean of the others, head rows zero (synthetic choice: they never win). A family whose
  matrix is padded beyond its tokenizer already has a row for it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import PROJECTOR_PREFIX, LlavaCheckpoint
from huatuo_convert.families.base import ModelFamily
from huatuo_convert.llava_hf import HF_ARCHITECTURE, LAYOUT_ORIGINAL, SELECT_FEATURE, VISION_MODEL

#: `--layout` choices: transformers 4.x's tensor names, or those of transformers >= 4.52 and 5.x
HF_KEY_STYLES = ("hf", "hf-v5")
IMAGE_TOKEN = "<image>"
#: what the conversion pads the embedding rows to
PAD_ROWS_TO = 64
#: original config keys that are LLaVA's, not the language model's
_LLAVA_KEYS = ("architectures", "model_type", "image_aspect_ratio", "tokenizer_padding_side", "tokenizer_model_max_length",
               "huatuo_synthetic")
_WEIGHT_FILES = ("model.safetensors.index.json",)


def hf_tensor_name(name: str, style: str) -> str:
    """The -hf name of an original-layout tensor name (CLIP tower names as `VisionTower.state_dict_names`)."""
    v5 = style == "hf-v5"
    if name.startswith("vision_model."):
        return "model.vision_tower." + name.removeprefix("vision_model.") if v5 else "vision_tower." + name
    if name.startswith(PROJECTOR_PREFIX):
        index, rest = name[len(PROJECTOR_PREFIX):].split(".", 1)
        return ("model." if v5 else "") + f"multi_modal_projector.linear_{ {'0': 1, '2': 2}[index] }.{rest}"
    if name == "lm_head.weight":
        return name if v5 else "language_model.lm_head.weight"
    if name.startswith("model."):
        return ("model.language_model." if v5 else "language_model.model.") + name.removeprefix("model.")
    raise ValueError(f"no -hf name for {name}")


def _tokenizer_size(root: Path) -> int:
    tokenizer_json = root / "tokenizer.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        return max([*data["model"]["vocab"].values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString((root / "tokenizer.model").read_bytes())
    added = root / "added_tokens.json"
    extra = json.loads(added.read_text(encoding="utf-8")) if added.is_file() else {}
    return max([len(proto.pieces) - 1, *extra.values()]) + 1


def _add_image_token(out: Path, token_id: int) -> None:
    """`<image>` as an added special token, where this tokenizer keeps its added tokens."""
    tokenizer_json = out / "tokenizer.json"
    entry = {"id": token_id, "content": IMAGE_TOKEN, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        data.setdefault("added_tokens", []).append(entry)
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    else:
        added = out / "added_tokens.json"
        tokens = json.loads(added.read_text(encoding="utf-8")) if added.is_file() else {}
        added.write_text(json.dumps({**tokens, IMAGE_TOKEN: token_id}, indent=2), encoding="utf-8")
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config.setdefault("added_tokens_decoder", {})
        decoder[str(token_id)] = {k: v for k, v in entry.items() if k != "id"}
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def hf_config(config: dict[str, Any], vision: dict[str, Any], *, family: ModelFamily, rows: int, image_token_index: int,
              style: str) -> dict[str, Any]:
    """config.json of the -hf layout from an original config (and the tower's CLIP config)."""
    strategy = {feature: name for name, feature in SELECT_FEATURE.items()}[config.get("mm_vision_select_feature", "patch")]
    text = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in _LLAVA_KEYS}
    hf: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "llava",
        "text_config": {**text, "architectures": [family.text_architecture], "model_type": family.text_model_type,
                        "vocab_size": rows},
        "vision_config": {**vision, "model_type": VISION_MODEL},
        "vision_feature_layer": int(config.get("mm_vision_select_layer", -2)),
        "vision_feature_select_strategy": strategy,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "image_token_index": image_token_index,
        "image_seq_length": (int(vision["image_size"]) // int(vision["patch_size"])) ** 2,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "transformers_version": "5.0.0" if style == "hf-v5" else "4.44.2",
    }
    if "torch_dtype" in config:
        hf["torch_dtype"] = config["torch_dtype"]
    if "huatuo_synthetic" in config:
        hf["huatuo_synthetic"] = config["huatuo_synthetic"]
    return hf


def _save_shards(out: Path, tensors: dict[str, Any], shards: int) -> None:
    """One model.safetensors, or `shards` files of about equal size and model.safetensors.index.json."""
    from safetensors.torch import save_file

    names = list(tensors)
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    shards = max(1, min(shards, len(names)))
    budget, acc, groups = sum(sizes) / shards, 0, [[]]  # type: ignore[var-annotated]
    for name, size in zip(names, sizes, strict=True):
        if groups[-1] and acc + size > budget * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        acc += size
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, fname))
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_hf_checkpoint(src: Path, out: Path, *, style: str = "hf", image_token: bool = True) -> Path:
    """Write the checkpoint `src` (original layout) to `out` (new or empty) in transformers' -hf layout."""
    torch = require("torch")
    if style not in HF_KEY_STYLES:
        raise HuatuoError(f"unknown -hf key style '{style}'", hint=f"one of {', '.join(HF_KEY_STYLES)}")
    ckpt = LlavaCheckpoint.open(src)
    if ckpt.layout != LAYOUT_ORIGINAL or not ckpt.has_vision:
        raise HuatuoError(f"{src} is not a LLaVA checkpoint in the original layout (found {ckpt.layout}, "
                          f"{ckpt.hf_architecture})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HuatuoError(f"output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).iterdir()):  # tokenizer, generation and preprocessor files as they are
        if path.is_file() and path.name != "config.json" and path.suffix not in (".safetensors", ".bin", ".pt") \
                and path.name not in _WEIGHT_FILES:
            shutil.copy2(path, out / path.name)
    if not (out / "preprocessor_config.json").is_file():
        (out / "preprocessor_config.json").write_text(json.dumps(ckpt.preprocessor_config, indent=2))
    tensors = {hf_tensor_name(n, style): ckpt.get(n) for n in ckpt.llm_tensor_names() + ckpt.projector_tensor_names()}
    tensors.update({hf_tensor_name(n, style): ckpt.vision.get(n) for n in ckpt.vision.state_dict_names()})
    rows = int(ckpt.config["vocab_size"])
    token_id = _tokenizer_size(Path(src))
    if image_token:
        _add_image_token(out, token_id)
        if token_id >= rows:  # no padding row left for it: append rows, padded as the conversion does
            new_rows = math.ceil((token_id + 1) / PAD_ROWS_TO) * PAD_ROWS_TO
            for name in (hf_tensor_name("model.embed_tokens.weight", style), hf_tensor_name("lm_head.weight", style)):
                if name not in tensors:
                    continue
                old = tensors[name]
                fill = old.float().mean(dim=0, keepdim=True) if "embed_tokens" in name else torch.zeros(1, old.shape[1])
                tensors[name] = torch.cat([old, fill.to(old.dtype).expand(new_rows - rows, -1)])
            rows = new_rows
    config = hf_config(ckpt.config, ckpt.vision.config, family=ckpt.family, rows=rows, image_token_index=token_id,
                       style=style)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _save_shards(out, tensors, len(set(ckpt.tensors.files.values())))
    return out
