"""HuatuoGPT-Vision-34B: LLaVA-1.5 on Yi-1.5-34B (the Llama architecture) with a CLIP ViT-L/14-336 tower.

Llama has no attention biases and rotates q/k halves where ggml's graph rotates adjacent pairs,
so q and k rows are permuted for llama.cpp. Yi's tokenizer is a sentencepiece BPE with byte
fallback (`tokenizer.model`, <|startoftext|>/<|endoftext|>), read by the official code through
transformers 4.x's slow LlamaTokenizer; its embedding matrix is exactly the vocabulary.
The real-vocabulary tests use LLaMA's 32 000-piece model, the sentencepiece vocabulary llama.cpp
ships (Yi's own is not in the llama-cpp-python sdist).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from huatuo_convert.families.base import ModelFamily, SynthRecipe
from huatuo_convert.gguf_arch import DECODER_GLOBAL_TENSORS, DECODER_LAYER_TENSORS, LlmArch
from huatuo_convert.gguf_tokenizer import spm_vocab
from huatuo_convert.synth_tokenizers import SpmStyle, write_spm_tokenizer

#: tokenizer_config.json of 01-ai/Yi-1.5-34B
YI_TOKENIZER = SpmStyle(
    bos="<|startoftext|>",
    eos="<|endoftext|>",
    tokenizer_config={
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
        "model_max_length": 4096,
    },
)


def _reference_config(transformers: Any, common: dict[str, Any], config: Mapping[str, Any]) -> Any:
    return transformers.LlamaConfig(**common, attention_bias=config.get("attention_bias", False))


FAMILY = ModelFamily(
    name="llava-llama",
    summary="HuatuoGPT-Vision-34B layout (Yi-1.5, Llama architecture)",
    hf_architecture="LlavaLlamaForCausalLM",
    model_type="llava_llama",
    text_architecture="LlamaForCausalLM",
    text_model_type="llama",
    llm=LlmArch(
        gguf_arch="llama",
        global_tensors=DECODER_GLOBAL_TENSORS,
        layer_tensors=dict(DECODER_LAYER_TENSORS),
        permuted=frozenset({"self_attn.q_proj.weight", "self_attn.k_proj.weight"}),
    ),
    vocab=spm_vocab,
    reference_class="LlamaForCausalLM",
    reference_config=_reference_config,
    synth=SynthRecipe(
        write_tokenizer=partial(write_spm_tokenizer, style=YI_TOKENIZER),
        config=lambda layers: {"attention_bias": False, "pretraining_tp": 1, "rope_scaling": None},
        vocab_multiple=None,
        real_vocab="ggml-vocab-llama-spm.gguf",
    ),
    card="huatuogpt-vision-34b",
)
