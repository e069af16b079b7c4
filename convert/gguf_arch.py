"""Declarative language-model tables: HF tensor names and hyper-parameters -> GGUF.

Each model family (`huatuo_convert.families`) declares one `LlmArch`, as llama.cpp's converter
declares one per architecture. The table is the whole truth: a checkpoint tensor that no row
names is an error, and so is a row the checkpoint lacks, so a silently dropped or misnamed
weight can never reach a GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huatuo_convert.checkpoint import LlavaCheckpoint

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class LlmArch:
    """How one language-model family maps onto llama.cpp."""

    gguf_arch: str  # general.architecture
    global_tensors: dict[str, str]  # HF name -> GGUF name, outside the layers
    layer_tensors: dict[str, str]  # suffix after `model.layers.{i}.` -> GGUF name with {i}
    #: Tensors whose rows llama.cpp wants in its own rotary order (where HF rotates halves and the
    #: ggml graph of `gguf_arch` rotates adjacent pairs; a NEOX-order graph needs none).
    permuted: frozenset[str] = frozenset()
    #: Checkpoint tensors that are derived buffers, not weights (older checkpoints store them).
    ignored_layer_suffixes: tuple[str, ...] = ("self_attn.rotary_emb.inv_freq",)
    #: M-RoPE (Qwen2-VL): `rope.dimension_sections`, the config's `mrope_section` padded to llama.cpp's four
    mrope: bool = False

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
            **({"rope.dimension_sections": [*(int(x) for x in c["mrope_section"]), 0]} if self.mrope else {}),
        }


def arch_for(ckpt: LlavaCheckpoint) -> LlmArch:
    """The table of a checkpoint's family."""
    return ckpt.family.llm


#: The tensors every llama-style decoder has (embeddings, final norm, head) ...
DECODER_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
#: ... and in each layer (attention without biases, gated MLP, two RMS norms).
DECODER_LAYER_TENSORS = {
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

