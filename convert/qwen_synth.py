"""A tiny random HuatuoGPT-Vision-7B-Qwen2.5VL checkpoint, written by transformers itself.

The model is transformers' own class of the family (its `hf_architecture`) at tiny sizes, saved with
`save_pretrained` (real file and tensor names), with weights re-drawn as `huatuo_convert.synth`
draws them (activations O(1), decisive logits), the family's byte-level BPE (trained, or the real
vocabulary its `synth.real_vocab` names) with Qwen2.5-VL's 22 added tokens at their ids,
Qwen2.5-VL-Instruct's chat template and a transformers 4.x `preprocessor_config.json` with small
pixel limits (few image positions). `config_style` / `key_style` write what the other
transformers generation writes, so both are tested: "4.x" keeps the language model's fields at the
top level with `rope_scaling.mrope_section`; "nested" stores `model.language_model.*` / `model.visual.*`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huatuo_cli.engine.gguf_tokens import MARKERS_AS_TEXT
from huatuo_cli.extras import require

#: Qwen2.5-VL-7B-Instruct's chat template (chat_template.json), verbatim
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
#: the synthetic checkpoint's image limits: at most 64 image positions (the published one states its own)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 64
CONFIG_STYLES = ("5.x", "4.x")
KEY_STYLES = ("plain", "nested")


def _preprocessor_config() -> dict[str, Any]:
    """A transformers 4.x Qwen2.5-VL preprocessor_config.json (what 2025 checkpoints carry)."""
    return {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor"}


def _as_4x(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 4.x's config.json of the same model: text fields at the top level, `rope_theta`,
    `rope_scaling` with `mrope_section`."""
    text = dict(config.pop("text_config"))
    rope = text.pop("rope_parameters")
    for key in ("model_type", "architectures", "layer_types", "dtype", "_name_or_path"):
        text.pop(key, None)
    out = {**config, **text, "rope_theta": rope["rope_theta"],
           "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": rope["mrope_section"]},
           "transformers_version": "4.49.0"}
    out["vision_config"] = {k: v for k, v in config["vision_config"].items() if k != "rope_parameters"}
    return out


def write_qwen_vl_checkpoint(out: Path, spec: Any, *, config_style: str = "4.x", key_style: str = "plain") -> None:
    """Write the checkpoint into the empty folder `out` (`spec`: huatuo_convert.synth.SynthSpec)."""
    torch = require("torch")
    transformers = require("transformers")
    from safetensors.torch import load_file, save_file

    from huatuo_convert.synth import _random_tensor

    family = spec.family
    vocab = family.synth.write_tokenizer(out, spec.vocab_size, MARKERS_AS_TEXT,
                                         Path(spec.vocab_from) if spec.vocab_from else None)
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    multiple = family.synth.vocab_multiple or 1
    rows = -(-vocab["size"] // multiple) * multiple
    head_dim = spec.hidden_size // spec.num_heads
    half = head_dim // 2  # M-RoPE sections split half the head dimension as the published [16, 24, 24] splits 64
    t_dims = half // 4
    section = [t_dims, (half - t_dims) // 2, half - t_dims - (half - t_dims) // 2]
    depth = spec.vision_layers + 1
    model_class = getattr(transformers, family.hf_architecture)
    config = model_class.config_class(
        text_config={"vocab_size": rows, "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
                     "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
                     "num_key_value_heads": spec.num_kv_heads, "max_position_embeddings": spec.max_position_embeddings,
                     "rms_norm_eps": spec.rms_norm_eps, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"],
                     "rope_parameters": {"rope_type": "default", "mrope_section": section, "rope_theta": spec.rope_theta}},
        vision_config={"depth": depth, "hidden_size": spec.vision_hidden_size,
                       "intermediate_size": spec.vision_intermediate_size, "num_heads": spec.vision_heads,
                       "out_hidden_size": spec.hidden_size, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 112,
                       "fullatt_block_indexes": [i for i in range(depth) if i % 2 == 1]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False, architectures=[family.hf_architecture])
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[spec.dtype]
    model = model_class(config)
    model.save_pretrained(str(out), safe_serialization=True)
    generator = torch.Generator().manual_seed(spec.seed * 1000)
    weights = load_file(str(out / "model.safetensors"))
    drawn = {name: _random_tensor(torch, name, tuple(t.shape), generator, dtype) for name, t in sorted(weights.items())}
    drawn["lm_head.weight"][vocab["size"]:] = 0  # rows past the tokenizer never win the argmax
    if key_style == "nested":
        drawn = {("model.language_model." + n[len("model."):] if n.startswith("model.") else
                  "model." + n if n.startswith("visual.") else n): t for n, t in drawn.items()}
    save_file(drawn, str(out / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads((out / "config.json").read_text())
    raw["huatuo_synthetic"] = True  # model_cards.SYNTHETIC_KEY: the card's dimensions do not apply
    raw["dtype"] = spec.dtype.replace("bf16", "bfloat16").replace("f16", "float16").replace("f32", "float32")
    if config_style == "4.x":
        raw = _as_4x(raw)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
         "pad_token_id": ids["<|endoftext|>"], "do_sample": False, "repetition_penalty": 1.2}, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
