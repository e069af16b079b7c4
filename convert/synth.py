"""Tiny random checkpoints in the real on-disk layout of HuatuoGPT-Vision-7B and -34B.

No real weights can be downloaded where huatuo is built and tested, so every converter, checker
and runtime path is exercised on these. They must be faithful to the *layout* (config keys,
tensor names, sharding, tokenizer files, both vision-tower placements); the numbers are random.
Dimensions are parameters: tests use tiny ones, benchmarks real ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from huatuo_cli.engine.gguf_tokens import MARKER_STYLES, MARKERS_AS_TEXT
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import CLIP_HEAD_DIM  # the embedded layout carries no vision config
from huatuo_convert.families import default_family, family_named
from huatuo_convert.families.base import ModelFamily

VISION_LAYOUTS = ("embedded", "folder")
DTYPES = ("bf16", "f16", "f32")
#: Where the folder layout keeps its CLIP tower, relative to the model folder.
VISION_FOLDER = "vit/clip_vit_large_patch14_336"
#: What the embedded layout names as its tower (a hub id; never fetched).
VISION_HUB_ID = "openai/clip-vit-large-patch14-336"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic checkpoint; the same spec and seed give the same bytes."""

    #: the model family (`huatuo_convert.families`); the default family when not given
    arch: str = field(default_factory=lambda: default_family().name)
    vision_layout: str = "embedded"
    shards: int = 2
    dtype: str = "bf16"
    seed: int = 0
    hidden_size: int = 64
    intermediate_size: int = 160
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 600
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 256
    vision_layers: int = 3
    image_size: int = 56
    patch_size: int = 14
    vision_projection_dim: int = 64
    #: Embedding rows when larger than the tokenizer needs (benchmarks: the published vocabulary's).
    padded_vocab_size: int | None = None
    #: The chat markers as added tokens (`tokens`) or plain text (`text`, not in the vocabulary).
    markers: str = MARKERS_AS_TEXT
    #: A llama.cpp vocab-only GGUF whose real vocabulary the tokenizer is built from (then
    #: `vocab_size` is ignored): the family's `synth.real_vocab`.
    vocab_from: str | None = None

    def validate(self) -> None:
        family_named(self.arch)  # an unknown one: a HuatuoError naming the registered families
        if self.vision_layout not in VISION_LAYOUTS:
            raise HuatuoError(f"unknown vision layout '{self.vision_layout}'", hint=f"one of {VISION_LAYOUTS}")
        if self.markers not in MARKER_STYLES:
            raise HuatuoError(f"unknown marker style '{self.markers}'", hint=f"one of {MARKER_STYLES}")
        if self.vocab_from is not None and not Path(self.vocab_from).is_file():
            raise HuatuoError(f"vocabulary file {self.vocab_from} not found",
                              hint=f"a llama.cpp vocab-only GGUF, e.g. vendor/llama.cpp/models/"
                                   f"{family_named(self.arch).synth.real_vocab} of the llama-cpp-python sdist")
        if self.dtype not in DTYPES:
            raise HuatuoError(f"unknown dtype '{self.dtype}'", hint=f"one of {DTYPES}")
        if self.shards < 1:
            raise HuatuoError("--shards must be at least 1")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise HuatuoError("hidden size must divide into heads, and heads into KV heads")
        if self.vision_hidden_size % CLIP_HEAD_DIM:
            raise HuatuoError(f"vision hidden size must be a multiple of {CLIP_HEAD_DIM} (CLIP head size)")
        if self.image_size % self.patch_size:
            raise HuatuoError("image size must be a multiple of the patch size")
        if self.vision_layers < 2:
            raise HuatuoError("the vision tower needs at least 2 layers (select layer -2)")

    @property
    def family(self) -> ModelFamily:
        return family_named(self.arch)

    @property
    def vision_heads(self) -> int:
        return self.vision_hidden_size // CLIP_HEAD_DIM


def _llm_config(spec: SynthSpec, vocab: dict) -> dict:
    """config.json of the LLaVA model, in the transformers 4.x style real checkpoints use."""
    family = spec.family
    # some families pad the embedding matrix beyond the tokenizer, others have exactly the vocabulary
    multiple = family.synth.vocab_multiple
    vocab_size = int(math.ceil(vocab["size"] / multiple) * multiple) if multiple else vocab["size"]
    if spec.padded_vocab_size is not None:
        if spec.padded_vocab_size < vocab["size"]:
            raise HuatuoError(f"padded vocab size {spec.padded_vocab_size} is below the tokenizer's {vocab['size']}")
        vocab_size = spec.padded_vocab_size
    config = {
        "architectures": [family.hf_architecture],
        "model_type": family.model_type,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[spec.dtype],
        "transformers_version": "4.40.0",
        "bos_token_id": vocab["bos_token_id"],
        "eos_token_id": vocab["eos_token_id"],
        # LLaVA-1.5 multimodal keys (docs/model.md)
        "mm_vision_tower": f"./{VISION_FOLDER}" if spec.vision_layout == "folder" else VISION_HUB_ID,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": spec.vision_hidden_size,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": 4096,
        # not in real checkpoints: tells model-card identification this is a test model (convert/model_cards.py)
        "huatuo_synthetic": True,
    }
    config.update(family.synth.config(spec.num_layers))
    return config


def _clip_vision_config(spec: SynthSpec) -> dict:
    return {
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "projection_dim": spec.vision_projection_dim,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
        "model_type": "clip_vision_model",
    }


def _preprocessor_config(spec: SynthSpec) -> dict:
    return {
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": spec.image_size},
    }


def _llm_tensor_shapes(spec: SynthSpec, vocab_size: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    h, inter = spec.hidden_size, spec.intermediate_size
    kv = spec.num_kv_heads * (h // spec.num_heads)
    yield "model.embed_tokens.weight", (vocab_size, h)
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        if "self_attn.q_proj.bias" in spec.family.llm.layer_tensors:  # the family's table has q, k, v biases
            yield p + "self_attn.q_proj.bias", (h,)
            yield p + "self_attn.k_proj.bias", (kv,)
            yield p + "self_attn.v_proj.bias", (kv,)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (inter, h)
        yield p + "mlp.up_proj.weight", (inter, h)
        yield p + "mlp.down_proj.weight", (h, inter)
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (vocab_size, h)
    yield "model.mm_projector.0.weight", (h, spec.vision_hidden_size)
    yield "model.mm_projector.0.bias", (h,)
    yield "model.mm_projector.2.weight", (h, h)
    yield "model.mm_projector.2.bias", (h,)


def _clip_tensor_shapes(spec: SynthSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """CLIPVisionModel state-dict names (prefix `vision_model.`)."""
    d, inter = spec.vision_hidden_size, spec.vision_intermediate_size
    n_pos = (spec.image_size // spec.patch_size) ** 2 + 1
    p = "vision_model."
    yield p + "embeddings.class_embedding", (d,)
    yield p + "embeddings.patch_embedding.weight", (d, 3, spec.patch_size, spec.patch_size)
    yield p + "embeddings.position_embedding.weight", (n_pos, d)
    yield p + "pre_layrnorm.weight", (d,)
    yield p + "pre_layrnorm.bias", (d,)
    for i in range(spec.vision_layers):
        q = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield q + f"self_attn.{proj}.weight", (d, d)
            yield q + f"self_attn.{proj}.bias", (d,)
        for ln in ("layer_norm1", "layer_norm2"):
            yield q + f"{ln}.weight", (d,)
            yield q + f"{ln}.bias", (d,)
        yield q + "mlp.fc1.weight", (inter, d)
        yield q + "mlp.fc1.bias", (inter,)
        yield q + "mlp.fc2.weight", (d, inter)
        yield q + "mlp.fc2.bias", (d,)
    yield p + "post_layernorm.weight", (d,)
    yield p + "post_layernorm.bias", (d,)


def _random_tensor(torch, name: str, shape: tuple[int, ...], generator, dtype):
    """Weights scaled so activations stay O(1) and logits are decisive (top-1 margins matter)."""
    if name.endswith(("norm.weight", "layernorm.weight", "layrnorm.weight", "layer_norm1.weight", "layer_norm2.weight",
                      "norm1.weight", "norm2.weight", "ln_q.weight")):
        t = 1.0 + 0.1 * torch.randn(shape, generator=generator)
    elif name.endswith(".bias") or name.endswith("class_embedding"):
        t = 0.1 * torch.randn(shape, generator=generator)
    elif name.endswith(("embed_tokens.weight", "position_embedding.weight")):
        t = torch.randn(shape, generator=generator)
    elif name == "lm_head.weight":
        t = torch.randn(shape, generator=generator) * (4.0 / math.sqrt(shape[1]))
    else:
        fan_in = math.prod(shape[1:])
        t = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return t.to(dtype).contiguous()


def _write_safetensors(
    out: Path, tensors: list[tuple[str, tuple[int, ...]]], spec: SynthSpec, shards: int, seed_offset: int,
    real_vocab: int | None = None,
) -> None:
    """Write tensors as HF does: one model.safetensors, or N shards plus model.safetensors.index.json."""
    torch = require("torch")
    from safetensors.torch import save_file

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[spec.dtype]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    sizes = [math.prod(shape) * itemsize for _, shape in tensors]
    total = sum(sizes)
    shards = max(1, min(shards, len(tensors)))
    budget = total / shards
    groups: list[list[int]] = [[]]
    acc = 0
    for i, size in enumerate(sizes):
        if groups[-1] and acc + size > budget * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        acc += size
    generator = torch.Generator().manual_seed(spec.seed * 1000 + seed_offset)
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        chunk = {tensors[i][0]: _random_tensor(torch, tensors[i][0], tensors[i][1], generator, dtype) for i in group}
        if real_vocab is not None and "lm_head.weight" in chunk:
            # Rows past the tokenizer pad the matrix (vocab_multiple); they must never win the argmax.
            chunk["lm_head.weight"][real_vocab:] = 0
        save_file(chunk, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in chunk})
        del chunk
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_synthetic_checkpoint(out: Path, spec: SynthSpec) -> Path:
    """Write a tiny random HuatuoGPT-Vision checkpoint to `out` (which must not exist or be empty)."""
    spec.validate()
    for module in ("torch", "safetensors", "tokenizers", "sentencepiece"):
        require(module)  # a missing extra fails before anything is written
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HuatuoError(f"output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    if spec.family.synth.write_checkpoint is not None:  # a family whose checkpoint transformers writes itself
        spec.family.synth.write_checkpoint(out, spec)
        (out / "huatuo_synth.json").write_text(json.dumps(asdict(spec), indent=2))
        return out
    vocab = spec.family.synth.write_tokenizer(out, spec.vocab_size, spec.markers, Path(spec.vocab_from) if spec.vocab_from else None)
    config = _llm_config(spec, vocab)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": vocab["bos_token_id"], "eos_token_id": vocab["eos_token_id"],
                    "do_sample": False, "max_new_tokens": 512, "repetition_penalty": 1.2}, indent=2)
    )
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(spec), indent=2))
    llm = list(_llm_tensor_shapes(spec, config["vocab_size"]))
    clip = list(_clip_tensor_shapes(spec))
    if spec.vision_layout == "embedded":
        tower = [(f"model.vision_tower.vision_tower.{name}", shape) for name, shape in clip]
        _write_safetensors(out, llm + tower, spec, spec.shards, seed_offset=0, real_vocab=vocab["size"])
    else:
        _write_safetensors(out, llm, spec, spec.shards, seed_offset=0, real_vocab=vocab["size"])
        folder = out / VISION_FOLDER
        folder.mkdir(parents=True)
        clip_config = {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": spec.vision_projection_dim,
            "vision_config": _clip_vision_config(spec),
            "transformers_version": "4.40.0",
        }
        (folder / "config.json").write_text(json.dumps(clip_config, indent=2))
        (folder / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(spec), indent=2))
        _write_safetensors(folder, clip, spec, 1, seed_offset=1)
    (out / "huatuo_synth.json").write_text(json.dumps(asdict(spec), indent=2))
    return out
