"""Issue 2 "Done when": on dimensions no other test uses, F16 agrees with the reference on top-1
at every position of every prompt, and tokenization matches exactly."""

from __future__ import annotations

import pytest

from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.llm_gguf import write_llm_gguf

UNSEEN = dict(hidden_size=96, intermediate_size=224, num_layers=3, num_heads=6, num_kv_heads=3, vocab_size=700, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llava-qwen2", "llava-llama"])
def test_f16_top1_every_position_and_exact_tokens(make_checkpoint, tmp_path, arch):
    ckpt = LlavaCheckpoint.open(make_checkpoint(arch=arch, vision_layout="folder", **UNSEEN))
    _, fidelity = write_llm_gguf(ckpt, tmp_path / "llm.gguf", "f16")
    assert fidelity["tokenizer"]["mismatches"] == []
    logits = fidelity["logits"]
    assert logits["positions"] > 100
    assert logits["top1_agreement"] == 1.0, logits  # raw: every position, near-ties included
