"""Stream a checkpoint's language model into one GGUF file, a few rows at a time.

GGUFWriter can take every tensor's name, shape and type up front (`add_tensor_info`), write the
header, and then accept the data tensor by tensor (`write_tensor_data`). Each tensor's data is
handed over as a `RowStream` that reads a block of rows from safetensors, converts it and
writes it, so peak memory is one block (tens of MB), not the model and not even one tensor:
a 7B model converts on a 24 GiB machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.gguf_arch import LlmArch, arch_for
from huatuo_convert.gguf_tokenizer import add_vocab, vocab_for

#: Output types GGUFWriter writes directly (everything else goes through llama.cpp's quantizer).
DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")
#: Bytes of float32 rows converted at once (bounds peak memory of the conversion).
BLOCK_BYTES = 32 * 1024 * 1024


@dataclass
class TensorPlan:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    permute_heads: int | None  # llama q/k: rows per head to reorder for ggml's rotary, else None

    @property
    def nbytes(self) -> int:
        gguf = require("gguf")
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


def _qtype(quant: str, shape: tuple[int, ...]):
    """Per-tensor type for a direct output type, as llama.cpp's converter chooses them.

    1-D tensors (norms, biases) stay F32: llama.cpp computes them in F32 and expects them so.
    Q8_0 needs rows that are a multiple of its block size (32); others fall back to F16.
    """
    gguf = require("gguf")
    t = gguf.GGMLQuantizationType
    if len(shape) == 1 or quant == "f32":
        return t.F32
    if quant == "q8_0":
        return t.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[t.Q8_0][0] == 0 else t.F16
    return {"f16": t.F16, "bf16": t.BF16}[quant]


def plan_tensors(ckpt: LlavaCheckpoint, arch: LlmArch, quant: str) -> list[TensorPlan]:
    """Every GGUF tensor in write order; missing or unexpected checkpoint tensors are errors."""
    present = [n for n in ckpt.llm_tensor_names() if not arch.is_ignored(n)]
    unexpected = sorted(n for n in present if arch.gguf_name(n) is None)
    tied = bool(ckpt.config.get("tie_word_embeddings", False)) and "lm_head.weight" not in present
    expected = arch.expected(int(ckpt.config["num_hidden_layers"]), tied)
    missing = [n for n in expected if n not in set(present)]
    extra_layers = sorted(n for n in present if n not in set(expected) and n not in unexpected)
    if unexpected or extra_layers:
        bad = unexpected + extra_layers
        raise HuatuoError(
            f"{len(bad)} checkpoint tensor(s) have no place in a {arch.gguf_arch} GGUF: {', '.join(bad[:5])}",
            hint="the checkpoint does not match its config.json architecture / num_hidden_layers",
        )
    if missing:
        raise HuatuoError(f"{len(missing)} tensor(s) missing from the checkpoint: {', '.join(missing[:5])}")
    head_dim = int(ckpt.config["hidden_size"]) // int(ckpt.config["num_attention_heads"])
    plans = []
    for name in expected:
        shape = ckpt.tensors.shape(name)
        permute = head_dim if name.split(".", 3)[-1] in arch.permuted else None
        plans.append(TensorPlan(name, arch.gguf_name(name), shape, _qtype(quant, shape), permute))
    return plans


class RowStream:
    """A tensor's GGUF bytes, produced block by block when GGUFWriter calls `tofile`."""

    def __init__(self, ckpt: LlavaCheckpoint, plan: TensorPlan) -> None:
        self.ckpt, self.plan = ckpt, plan
        self.nbytes = plan.nbytes

    def _blocks(self):
        rows = self.plan.shape[0]
        cols = math.prod(self.plan.shape[1:]) or 1
        align = self.plan.permute_heads or 1
        step = max(align, (BLOCK_BYTES // (4 * cols)) // align * align)
        for start in range(0, rows, step):
            yield self.ckpt.tensors.get_rows(self.plan.hf_name, start, min(rows, start + step))

    def _convert(self, block):
        torch = require("torch")
        gguf = require("gguf")
        t = gguf.GGMLQuantizationType
        if self.plan.permute_heads:
            hd = self.plan.permute_heads
            block = block.reshape(-1, 2, hd // 2, *block.shape[1:]).swapaxes(1, 2).reshape(block.shape)
        q = self.plan.qtype
        if q == t.F32:
            return block.to(torch.float32).contiguous().numpy()
        if q == t.F16:
            return block.to(torch.float16).contiguous().numpy()
        if q == t.BF16:
            return block.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return gguf.quants.quantize(block.to(torch.float32).numpy(), q)

    def tofile(self, fp) -> None:
        written = 0
        for block in self._blocks():
            data = self._convert(block)
            data.tofile(fp)
            written += data.nbytes
        if written != self.nbytes:
            raise AssertionError(f"{self.plan.gguf_name}: wrote {written} bytes, planned {self.nbytes}")


def file_type(quant: str) -> int:
    gguf = require("gguf")
    f = gguf.LlamaFileType
    return {"f32": f.ALL_F32, "f16": f.MOSTLY_F16, "bf16": f.MOSTLY_BF16, "q8_0": f.MOSTLY_Q8_0}[quant]


def provenance(ckpt: LlavaCheckpoint, quant: str) -> dict[str, Any]:
    """`huatuo.*` keys: enough to tell which checkpoint and prompt format a GGUF came from."""
    keys: dict[str, Any] = {
        "huatuo.source.config_sha256": ckpt.config_sha256,
        "huatuo.source.architecture": ckpt.hf_architecture,
        "huatuo.architecture": ckpt.arch,  # huatuo's id of the family (the manifest's `architecture`)
        "huatuo.prompt_format": ckpt.family.prompt_format,
        "huatuo.quantization": quant,
    }
    if ckpt.has_vision:
        keys["huatuo.mm_vision_select_layer"] = ckpt.select_layer
    return keys


def write_gguf_file(ckpt: LlavaCheckpoint, path: Path, quant: str, *, label: str | None = None,
                    name: str | None = None, on_tensor: Callable[[str], None] | None = None) -> None:
    """Write the language model to exactly `path` in a direct type (no atomicity: see atomic.py).

    `label` is the quantization recorded in `huatuo.quantization` (the final type when this file
    is an intermediate for llama.cpp's quantizer).
    """
    gguf = require("gguf")
    np = require("numpy")
    if quant not in DIRECT_TYPES:
        raise ValueError(f"{quant} is not written directly")
    arch = arch_for(ckpt)
    plans = plan_tensors(ckpt, arch, quant)
    vocab = vocab_for(ckpt)
    writer = gguf.GGUFWriter(str(path), arch.gguf_arch)
    try:
        writer.add_name(name or ckpt.root.name)
        writer.add_file_type(int(file_type(quant)))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in arch.hparams(ckpt).items():
            full = f"{arch.gguf_arch}.{key}"
            if isinstance(value, float):
                writer.add_float32(full, value)
            elif isinstance(value, list):
                writer.add_array(full, value)
            else:
                writer.add_uint32(full, value)
        writer.add_vocab_size(len(vocab.tokens))
        add_vocab(writer, vocab)
        for key, value in provenance(ckpt, label or quant).items():
            if isinstance(value, int):
                writer.add_int32(key, value)
            else:
                writer.add_string(key, str(value))
        for plan in plans:
            # the numpy dtype only matters for uint8 byte shapes; ours are element shapes
            writer.add_tensor_info(plan.gguf_name, plan.shape, np.dtype(np.float32), plan.nbytes, raw_dtype=plan.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for plan in plans:
            writer.write_tensor_data(RowStream(ckpt, plan))
            if on_tensor:
                on_tensor(plan.gguf_name)
        writer.flush()
    finally:
        writer.close()

