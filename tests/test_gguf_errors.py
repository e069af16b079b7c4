"""`huatuo convert gguf` refuses bad input with one clear error and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from huatuo_convert import gguf_write
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.llm_gguf import write_llm_gguf


def convert(*args: str):
    return CliRunner().invoke(cli, ["convert", "gguf", *map(str, args)])


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def one_shard(make_checkpoint, tmp_path):
    """A private single-shard copy of the default checkpoint, to damage."""
    root = tmp_path / "src"
    shutil.copytree(make_checkpoint(shards=1), root)
    return root


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def edit_tensors(root, change) -> None:
    tensors = load_file(str(root / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})


def test_unknown_architecture(one_shard, out_dir):
    cfg = json.loads((one_shard / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (one_shard / "config.json").write_text(json.dumps(cfg))
    res = convert(one_shard, out_dir / "m.gguf")
    assert res.exit_code == 1 and "unknown architecture MistralForCausalLM" in res.output
    assert "Traceback" not in res.output and leftovers(out_dir) == []


def test_missing_tensor(one_shard, out_dir):
    edit_tensors(one_shard, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    res = convert(one_shard, out_dir / "m.gguf")
    assert res.exit_code == 1 and "missing from the checkpoint: model.layers.1.mlp.up_proj.weight" in res.output
    assert leftovers(out_dir) == []


def test_unexpected_tensor(one_shard, out_dir):
    edit_tensors(one_shard, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}))
    res = convert(one_shard, out_dir / "m.gguf")
    assert res.exit_code == 1 and "model.layers.0.self_attn.q_norm.weight" in res.output
    assert "no place in a qwen2 GGUF" in res.output and leftovers(out_dir) == []


def test_layer_beyond_config_is_unexpected(one_shard, out_dir):
    cfg = json.loads((one_shard / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (one_shard / "config.json").write_text(json.dumps(cfg))
    res = convert(one_shard, out_dir / "m.gguf")
    assert res.exit_code == 1 and "model.layers.1." in res.output and leftovers(out_dir) == []


def test_pickle_refused_then_accepted_with_allow_pickle(one_shard, out_dir):
    state = load_file(str(one_shard / "model.safetensors"))
    torch.save(state, one_shard / "pytorch_model.bin")
    (one_shard / "model.safetensors").unlink()
    res = convert(one_shard, out_dir / "m.gguf")
    assert res.exit_code == 1 and "pickle" in res.output and "--allow-pickle" in res.output
    assert leftovers(out_dir) == []
    res = convert(one_shard, out_dir / "m.gguf", "--allow-pickle", "--quant", "f32")
    assert res.exit_code == 0, res.output
    assert json.loads((out_dir / "m.gguf.fidelity.json").read_text())["passed"]


def test_existing_output_needs_force(make_checkpoint, out_dir):
    out = out_dir / "m.gguf"
    out.write_bytes(b"precious")
    res = convert(make_checkpoint(), out, "--no-verify")
    assert res.exit_code == 1 and "already exists" in res.output and "--force" in res.output
    assert out.read_bytes() == b"precious"
    assert convert(make_checkpoint(), out, "--no-verify", "--force").exit_code == 0
    assert out.read_bytes()[:4] == b"GGUF" and leftovers(out_dir) == ["m.gguf"]


def test_failed_verification_leaves_nothing_and_keeps_the_old_file(make_checkpoint, out_dir, monkeypatch):
    out = out_dir / "m.gguf"
    out.write_bytes(b"old")
    strict = {"f16": {"max_rel_logit_delta": 1e-12, "top1_agreement_decisive": 1.0}}  # the family's, tightened
    declared = LlavaCheckpoint.family.fget
    monkeypatch.setattr(LlavaCheckpoint, "family",
                        property(lambda ckpt: dataclasses.replace(declared(ckpt), llm_tolerances=strict)))
    res = convert(make_checkpoint(), out, "--force")
    assert res.exit_code == 1 and "does not match the reference" in res.output
    assert leftovers(out_dir) == ["m.gguf"] and out.read_bytes() == b"old"


@pytest.mark.parametrize("quant", ["f16", "q4_k_m"])
def test_interrupt_leaves_nothing(make_checkpoint, out_dir, quant):
    ckpt = LlavaCheckpoint.open(make_checkpoint())
    seen = []

    def interrupt(name: str) -> None:
        seen.append(name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_llm_gguf(ckpt, out_dir / "m.gguf", quant, verify=False, on_tensor=interrupt)
    assert leftovers(out_dir) == []


def test_disk_full_is_a_user_error(make_checkpoint, out_dir, monkeypatch):
    # No unprivileged way to fill a disk in CI: the block writer raises what a full disk raises.
    real = gguf_write.RowStream.tofile

    def full(self, fp):
        if self.plan.gguf_name == "blk.1.attn_q.weight":
            fp.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, fp)

    monkeypatch.setattr(gguf_write.RowStream, "tofile", full)
    with pytest.raises(HuatuoError, match="disk full"):
        write_llm_gguf(LlavaCheckpoint.open(make_checkpoint()), out_dir / "m.gguf", "f16")
    assert leftovers(out_dir) == []
    res = convert(make_checkpoint(), out_dir / "m.gguf")
    assert res.exit_code == 1 and "disk full" in res.output and leftovers(out_dir) == []


def test_unknown_quant(make_checkpoint, out_dir):
    res = convert(make_checkpoint(), out_dir / "m.gguf", "--quant", "q3_xl")
    assert res.exit_code == 1 and "unknown quantization 'q3_xl'" in res.output and leftovers(out_dir) == []
