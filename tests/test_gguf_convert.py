"""`huatuo convert gguf` on every synthetic layout: real llama.cpp, verified against the reference."""

from __future__ import annotations

import json

import jinja2
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType, GGUFReader

from huatuo_cli.cli import cli
from huatuo_cli.engine.prompt import PROMPT_FORMAT, Turn, moderate, render
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.llm_gguf import fidelity_path
from tests.conftest import LAYOUTS


def convert(*args: str):
    return CliRunner().invoke(cli, ["convert", "gguf", *map(str, args)], catch_exceptions=False)


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_f16_conversion_passes_parity(make_checkpoint, tmp_path, arch, layout):
    src = make_checkpoint(arch=arch, vision_layout=layout)
    out = tmp_path / "llm.gguf"
    res = convert(src, out, "--quant", "f16")
    assert res.exit_code == 0, res.output
    fidelity = json.loads(fidelity_path(out).read_text())
    assert fidelity["passed"] and fidelity["quantization"] == "f16"
    assert fidelity["tokenizer"]["mismatches"] == []
    assert fidelity["tokenizer"]["identical"] == fidelity["tokenizer"]["strings"] >= 20
    logits = fidelity["logits"]
    assert logits["top1_agreement_decisive"] == 1.0
    assert logits["max_rel_logit_delta"] <= fidelity["tolerances"]["max_rel_logit_delta"]
    assert "top-1" in res.output and "tokenizer parity" in res.output
    # (the isolated user dirs of conftest hold the CPU self-test verdict when this test runs llama.cpp first)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("xdg_")) == [
        "llm.gguf", "llm.gguf.fidelity.json"]

    reader = GGUFReader(out)
    ckpt = LlavaCheckpoint.open(src)
    assert field(reader, "general.architecture") == {"llava-qwen2": "qwen2", "llava-llama": "llama"}[arch]
    assert field(reader, "huatuo.source.config_sha256") == ckpt.config_sha256
    assert field(reader, "huatuo.source.architecture") == ckpt.hf_architecture
    assert field(reader, "huatuo.prompt_format") == PROMPT_FORMAT
    assert field(reader, "huatuo.quantization") == "f16"
    assert field(reader, "huatuo.mm_vision_select_layer") == -2
    assert len(field(reader, "tokenizer.ggml.tokens")) == ckpt.config["vocab_size"]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == GGMLQuantizationType.F16
    assert types["output_norm.weight"] == GGMLQuantizationType.F32
    assert not any(name.startswith(("mm.", "v.")) for name in types)  # the LLM only


def test_f32_matches_reference_to_rounding(make_checkpoint, tmp_path):
    out = tmp_path / "llm.gguf"
    assert convert(make_checkpoint(arch="llava-llama"), out, "--quant", "f32").exit_code == 0
    logits = json.loads(fidelity_path(out).read_text())["logits"]
    assert logits["max_abs_logit_delta"] < 1e-3
    assert logits["top1_agreement"] == 1.0


def test_chat_template_is_the_prompt_format(make_checkpoint, tmp_path):
    out = tmp_path / "llm.gguf"
    assert convert(make_checkpoint(), out, "--quant", "f32", "--no-verify").exit_code == 0
    template = jinja2.Template(field(GGUFReader(out), "tokenizer.chat_template"))
    turns = [Turn("Is there an effusion?", images=2, answer="Yes, on the left."), Turn("胸腔积液多少？", images=1)]
    messages = []
    for t in turns:
        messages.append({"role": "user", "content": "<image>\n" * t.images + moderate(t.question)})
        if t.answer is not None:
            messages.append({"role": "assistant", "content": t.answer})
    assert template.render(messages=messages) == render(turns)
    assert not fidelity_path(out).exists()  # --no-verify writes no figures


@pytest.mark.parametrize("arch", ["llava-qwen2", "llava-llama"])
def test_quantized_outputs_report_loss(make_checkpoint, tmp_path, arch):
    # hidden 256: k-quant blocks are 256 wide, so Q4_K is really used (narrower rows fall back)
    src = make_checkpoint(arch=arch, hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2)
    figures = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        out = tmp_path / f"{quant}.gguf"
        res = convert(src, out, "--quant", quant)
        assert res.exit_code == 0, res.output
        figures[quant] = json.loads(fidelity_path(out).read_text())
        types = {t.tensor_type for t in GGUFReader(out).tensors}
        want = {"f16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0, "q4_k_m": GGMLQuantizationType.Q4_K}
        assert want[quant] in types
        assert GGUFReader(out).fields["huatuo.quantization"].contents() == quant
    for quant in ("q8_0", "q4_k_m"):
        fid = figures[quant]
        assert fid["tolerances"] is None and fid["passed"]  # reported, not gated
        assert fid["tokenizer"]["mismatches"] == []
        assert 0.5 < fid["logits"]["top1_agreement"] <= 1.0
    # fewer bits, more loss: the figures measure something
    kl = {q: figures[q]["logits"]["mean_kl"] for q in figures}
    assert kl["f16"] < kl["q8_0"] < kl["q4_k_m"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no intermediates left
