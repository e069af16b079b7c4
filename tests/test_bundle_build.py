"""`huatuo convert all`: a verified bundle, refused by every loading command once a byte changes."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from huatuo_cli.bundles.bundle import load_bundle
from huatuo_cli.cli import cli

CT = get_testdata_file("CT_small.dcm", download=False)


def test_bundle_on_unseen_dimensions_matches_reference_end_to_end(make_checkpoint, tmp_path):
    """Issue 3 'done when': F16 GGUF + ONNX, one image, first 16 greedy tokens equal the reference's.

    Dimensions here are used by no other test (LLM 96 wide, 3 layers, 6/3 heads; tower 192 wide,
    4 layers, image 70 -> 25 tokens).
    """
    src = make_checkpoint(arch="llava-qwen2", vision_layout="folder", seed=5, hidden_size=96, num_layers=3,
                          num_heads=6, num_kv_heads=3, intermediate_size=224, vocab_size=650,
                          vision_hidden_size=192, vision_intermediate_size=320, vision_layers=4, image_size=70)
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "b"), "--quant", "f16"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    e2e = manifest["fidelity"]["end_to_end"]
    assert e2e["identical"] and e2e["tokens_compared"] == 16 and not e2e["reference_stopped_early"]
    assert e2e["image_embedding_cosine"] >= 0.9999
    assert manifest["vision"]["tokens_per_image"] == 25
    for key in ("llm", "vision", "mmproj"):
        assert manifest["fidelity"][key]
    assert {f["role"] for f in manifest["files"]} == {"llm", "vision-fp32", "vision-fp16", "vision-int8", "preprocessor", "mmproj",
                                                      "model-card"}
    assert not list((tmp_path / "b").rglob("*.fidelity.json"))  # the figures live in manifest.json only
    assert manifest["source"]["config_sha256"] and manifest["prompt_format"] == "huatuo-v1"
    assert "llama_cpp_python" in manifest["tools"] or "llama-cpp-python" in manifest["tools"]


def test_llama_bundle_builds_with_quantized_llm(make_checkpoint, tmp_path):
    src = make_checkpoint(arch="llava-llama", vision_layout="embedded")
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "b"), "--quant", "q8_0", "--no-mmproj"])
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest.quantization == "q8_0" and not bundle.has("mmproj")
    assert "top-1" in res.output


def test_existing_output_and_failures_leave_nothing_behind(make_checkpoint, tmp_path):
    runner = CliRunner()
    (tmp_path / "b").mkdir()
    res = runner.invoke(cli, ["convert", "all", str(make_checkpoint()), str(tmp_path / "b")])
    assert res.exit_code == 1 and "already exists" in res.output
    broken = tmp_path / "ckpt"
    shutil.copytree(make_checkpoint(vision_layout="folder"), broken)
    shutil.rmtree(broken / "vit")
    res = runner.invoke(cli, ["convert", "all", str(broken), str(tmp_path / "c")])
    assert res.exit_code == 1 and "vision tower not found" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "ckpt"]  # no partial bundle


@pytest.fixture
def flipped_bundle(tiny_bundle, tmp_path, request):
    """A copy of the tiny bundle with one byte of the file with `role` changed."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    entry = load_bundle(copy, verify=False).manifest.file(request.param)
    path = copy / entry.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return copy, entry.path


ROLES = ["llm", "vision-fp32", "vision-fp16", "preprocessor", "mmproj", "model-card"]


@pytest.mark.parametrize("flipped_bundle", ROLES, indirect=True)
def test_every_loading_command_refuses_a_flipped_byte(flipped_bundle, tmp_path, monkeypatch):
    bundle, name = flipped_bundle
    runner = CliRunner()
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(CT, folder / "ct.dcm")
    commands = [
        ["ask", "--model", str(bundle), CT, "Describe."],
        ["batch", str(folder), "--out", str(tmp_path / "o"), "-q", "x", "--model", str(bundle)],
        ["models", "verify", str(bundle)],
    ]
    for args in commands:
        res = runner.invoke(cli, args)
        assert res.exit_code != 0, (args, res.output)
        assert name in res.output and "differs" in res.output, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit)
    monkeypatch.setenv("HUATUO_MODEL", str(bundle))
    res = runner.invoke(cli, ["doctor", "--json"])
    assert res.exit_code == 1
    assert name in res.output


def test_pickle_only_checkpoint_builds_a_bundle_only_with_allow_pickle(make_checkpoint, tmp_path):
    """--allow-pickle reaches every step (LLM, ONNX export, mmproj), not only the LLM."""
    import torch
    from safetensors.torch import load_file

    src = tmp_path / "ckpt"
    shutil.copytree(make_checkpoint(shards=1), src)
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", "all", str(src), str(tmp_path / "b"), "--quant", "f16"])
    assert res.exit_code == 1 and "--allow-pickle" in res.output
    res = runner.invoke(cli, ["convert", "all", str(src), str(tmp_path / "b"), "--quant", "f16", "--allow-pickle"])
    assert res.exit_code == 0, res.output
    assert load_bundle(tmp_path / "b").manifest.fidelity["end_to_end"]["identical"]


@pytest.mark.parametrize("quant,built", [("f16", False), ("q8_0", True)])
def test_end_to_end_divergence_refuses_an_f16_bundle_only(make_checkpoint, tmp_path, monkeypatch, quant, built):
    """README: for f32/f16 the bundle's first greedy tokens must equal the reference's "or no bundle is
    written"; a quantized bundle records the divergence instead. The reference's last token is changed
    (everything else real), so the bundle disagrees with it at token 15."""
    from huatuo_convert.bundle_build import E2E_TOKENS
    from huatuo_convert.reference import LlavaReference

    real_greedy = LlavaReference.greedy

    def off_by_one_at_the_end(self, *args, **kwargs):
        tokens = list(real_greedy(self, *args, **kwargs))
        assert len(tokens) == E2E_TOKENS  # the tiny checkpoint does not stop early
        return tokens[:-1] + [(tokens[-1] + 1) % 100]

    monkeypatch.setattr(LlavaReference, "greedy", off_by_one_at_the_end)
    out = tmp_path / "b"
    res = CliRunner().invoke(cli, ["convert", "all", str(make_checkpoint()), str(out), "--quant", quant, "--no-mmproj"])
    if built:
        assert res.exit_code == 0, res.output
        e2e = json.loads((out / "manifest.json").read_text())["fidelity"]["end_to_end"]
        assert not e2e["identical"] and e2e["first_divergence"] == E2E_TOKENS - 1
    else:
        assert res.exit_code == 1 and f"diverges from the reference at token {E2E_TOKENS - 1}" in res.output
        assert not out.exists() and not list(tmp_path.glob(".b.*"))  # no bundle, no partial folder
