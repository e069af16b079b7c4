"""HuatuoGPT-Vision-7B: LLaVA-1.5 on Qwen2-7B with a CLIP ViT-L/14-336 tower.

Qwen2 has biases on q, k and v and rotates in the NEOX order (no row permutation for llama.cpp);
its tokenizer is a byte-level BPE with Qwen2's split pattern and three special tokens appended
after the learned vocabulary, and its embedding matrix is padded beyond the tokenizer (151 936
rows for 151 646 tokens). Base Qwen2 defines no `<|user|>` / `<|assistant|>` tokens: whether the
published checkpoint added them is read from its tokenizer at conversion (docs/model.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from huatuo_convert.families.base import ModelFamily, SynthRecipe
from huatuo_convert.gguf_arch import DECODER_GLOBAL_TENSORS, DECODER_LAYER_TENSORS, LlmArch
from huatuo_convert.gguf_tokenizer import bpe_vocab
from huatuo_convert.synth_tokenizers import BpeStyle, write_bpe_tokenizer

#: tokenizer.json of Qwen/Qwen2-7B: its pre-tokenizer split pattern, special tokens and config
QWEN2_TOKENIZER = BpeStyle(
    split_regex=(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos="<|endoftext|>",
    tokenizer_config={
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
    },
)


def _reference_config(transformers: Any, common: dict[str, Any], config: Mapping[str, Any]) -> Any:
    return transformers.Qwen2Config(**common, use_sliding_window=False)


FAMILY = ModelFamily(
    name="llava-qwen2",
    summary="HuatuoGPT-Vision-7B layout (Qwen2)",
    hf_architecture="LlavaQwen2ForCausalLM",
    model_type="llava_qwen2",
    text_architecture="Qwen2ForCausalLM",
    text_model_type="qwen2",
    llm=LlmArch(
        gguf_arch="qwen2",
        global_tensors=DECODER_GLOBAL_TENSORS,
        layer_tensors={
            **DECODER_LAYER_TENSORS,
            "self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
            "self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
            "self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
        },
    ),
    vocab=partial(bpe_vocab, pre="qwen2"),
    reference_class="Qwen2ForCausalLM",
    reference_config=_reference_config,
    synth=SynthRecipe(
        write_tokenizer=partial(write_bpe_tokenizer, style=QWEN2_TOKENIZER),
        config=lambda layers: {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": layers},
        vocab_multiple=64,
        real_vocab="ggml-vocab-qwen2.gguf",
    ),
    card="huatuogpt-vision-7b",
    default=True,
)
