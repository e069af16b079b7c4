"""Declarative per-architecture tables: HF tensor names and hyper-parameters -> GGUF.

One `LlmArch` per language-model family, registered under every HF architecture name that
carries it (llama.cpp's converter does the same with a decorator). The table is the whole truth:
a checkpoint tensor that no row names is an error, and so is a row the checkpoint lacks, so a
silently dropped or misnamed weight can never reach a GGUF.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_convert.checkpoint import LlavaCheckpoint

#: HF architecture name -> its language-model table
_REGISTRY: dict[str, LlmArch] = {}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class LlmArch:
    """How one language-model family maps onto llama.cpp."""

    gguf_arch: str  # general.architecture
    global_tensors: dict[str, str]  # HF name -> GGUF name, outside the layers
    layer_tensors: dict[str, str]  # suffix after `model.layers.{i}.` -> GGUF name with {i}
    #: Tensors whose rows llama.cpp wants in its own rotary order (llama's q/k: HF rotates halves,
    #: ggml's llama graph rotates adjacent pairs; Qwen2 uses the NEOX order and needs nothing).
    permuted: frozenset[str] = frozenset()
    #: Checkpoint tensors that are derived buffers, not weights (older checkpoints store them).
    ignored_layer_suffixes: tuple[str, ...] = ("self_attn.rotary_emb.inv_freq",)

    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name for an HF tensor name, or None when the table has no row for it."""
        if hf_name in self.global_tensors:
            return self.global_tensors[hf_name]
        match = _LAYER.match(hf_name)
        if match and match.group(2) in self.layer_tensors:
            return self.layer_tensors[match.group(2)].format(i=int(match.group(1)))
        return None

    def is_ignored(self, hf_name: str) -> bool:
        match = _LAYER.match(hf_name)
        return bool(match and match.group(2) in self.ignored_layer_suffixes)

    def expected(self, n_layers: int, tied_embeddings: bool) -> list[str]:
        """Every HF tensor the table needs, in GGUF write order."""
        names = [n for n in self.global_tensors if n != "lm_head.weight"]
        for i in range(n_layers):
            names += [f"model.layers.{i}.{suffix}" for suffix in self.layer_tensors]
        if not tied_embeddings:
            names.append("lm_head.weight")
        return names

    def hparams(self, ckpt: LlavaCheckpoint) -> dict[str, Any]:
        """`{arch}.*` metadata keys (without the prefix) for this checkpoint."""
        c = ckpt.config
        heads = int(c["num_attention_heads"])
        return {
            "context_length": int(c.get("max_position_embeddings", 4096)),
            "embedding_length": int(c["hidden_size"]),
            "block_count": int(c["num_hidden_layers"]),
            "feed_forward_length": int(c["intermediate_size"]),
            "attention.head_count": heads,
            "attention.head_count_kv": ckpt.num_kv_heads,
            "rope.freq_base": ckpt.rope_theta,
            "rope.dimension_count": int(c["hidden_size"]) // heads,
            "attention.layer_norm_rms_epsilon": float(c.get("rms_norm_eps", 1e-6)),
        }


def register(*hf_architectures: str) -> Callable[[Callable[[], LlmArch]], Callable[[], LlmArch]]:
    """Register the table a factory returns under each HF architecture name."""

    def wrap(factory: Callable[[], LlmArch]) -> Callable[[], LlmArch]:
        arch = factory()
        for name in hf_architectures:
            _REGISTRY[name] = arch
        return factory

    return wrap


def arch_for(ckpt: LlavaCheckpoint) -> LlmArch:
    """The table of a checkpoint's architecture, or a HuatuoError naming the supported ones."""
    name = ckpt.hf_architecture
    if name not in _REGISTRY:
        raise HuatuoError(f"no GGUF conversion for architecture {name}", hint=f"supported: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_COMMON = {
    "input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


@register("LlavaQwen2ForCausalLM", "Qwen2ForCausalLM")
def qwen2() -> LlmArch:
    """Qwen2 (HuatuoGPT-Vision-7B): biases on q, k, v; NEOX rotary order, no permutation."""
    return LlmArch(
        gguf_arch="qwen2",
        global_tensors=_GLOBAL,
        layer_tensors={
            **_LAYER_COMMON,
            "self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
            "self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
            "self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
        },
    )


@register("LlavaLlamaForCausalLM", "LlamaForCausalLM")
def llama() -> LlmArch:
    """Llama / Yi-1.5 (HuatuoGPT-Vision-34B): no biases; q and k rows permuted for ggml's rotary."""
    return LlmArch(
        gguf_arch="llama",
        global_tensors=_GLOBAL,
        layer_tensors=dict(_LAYER_COMMON),
        permuted=frozenset({"self_attn.q_proj.weight", "self_attn.k_proj.weight"}),
    )
