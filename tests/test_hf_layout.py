"""Issue 19 item 3: every published file layout converts.

HuatuoGPT-Vision-7B-hf / -34B-hf hold the same models as the original checkpoints in transformers'
own `LlavaForConditionalGeneration` layout. A synthetic checkpoint rewritten into that layout
(`huatuo_convert.synth_hf`, with transformers 4.x and with 4.52+/5.x tensor names) must convert with
`huatuo convert all` to the same bundle as the original: the same GGUF tensors, the same manifest
facts, the same model-card decision. Layouts that are not HuatuoGPT-Vision are one clear error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch  # the convert extra (make install): missing fails, never skips
from click.testing import CliRunner
from gguf import GGUFReader
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.model_cards import identify
from huatuo_convert.synth_hf import IMAGE_TOKEN, write_hf_checkpoint
from tests.published_configs import PUBLISHED


def _convert(src: Path, out: Path) -> dict:
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(out), "--quant", "f16", "--no-mmproj"])
    assert res.exit_code == 0, res.output
    return json.loads((out / "manifest.json").read_text())


def _gguf(bundle: Path) -> GGUFReader:
    return GGUFReader(str(bundle / "llm-f16.gguf"))


def _tokens(reader: GGUFReader) -> list[str]:
    field = reader.fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _onnx_weights(bundle: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(bundle / "vision" / "vision-fp32.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


FACTS = ("architecture", "prompt_format", "quantization", "vision", "llm", "model_card")


@pytest.mark.parametrize("arch,vision_layout,style,image_token", [
    ("llava-qwen2", "embedded", "hf-v5", True),   # <image> in Qwen2's padding rows: nothing added
    ("llava-llama", "folder", "hf", False),       # a tokenizer without <image>
    ("llava-llama", "embedded", "hf", True),      # <image> past Yi's rows: the conversion appended rows
])
def test_hf_layout_converts_to_the_same_bundle(make_checkpoint, tmp_path, arch, vision_layout, style, image_token):
    src = make_checkpoint(arch=arch, vision_layout=vision_layout)
    hf = write_hf_checkpoint(src, tmp_path / "hf-model", style=style, image_token=image_token)
    want, got = _convert(src, tmp_path / "original"), _convert(hf, tmp_path / "hf")

    assert {k: got[k] for k in FACTS} == {k: want[k] for k in FACTS}
    assert got["model_card"]["card"] is not None
    assert got["source"]["hf_architecture"] == want["source"]["hf_architecture"]
    # the -hf layout keeps the tower in the main shards, wherever the original had it
    assert (want["source"]["vision_layout"], got["source"]["vision_layout"]) == (vision_layout, "embedded")
    assert (want["source"]["layout"], got["source"]["layout"]) == ("llava", "llava-hf")

    a, b = _gguf(tmp_path / "original"), _gguf(tmp_path / "hf")
    assert [t.name for t in b.tensors] == [t.name for t in a.tensors]
    hf_config = json.loads((hf / "config.json").read_text())
    rows = int(LlavaCheckpoint.open(src).config["vocab_size"])
    appended = hf_config["text_config"]["vocab_size"] - rows
    assert appended == (64 - rows % 64 if image_token and arch == "llava-llama" else 0)
    for x, y in zip(a.tensors, b.tensors, strict=True):
        if appended and x.name in ("token_embd.weight", "output.weight"):
            # the one difference: rows the -hf conversion appended for <image>, past the model's own
            assert list(y.shape) == [x.shape[0], x.shape[1] + appended]
            assert np.array_equal(np.asarray(y.data)[:rows], np.asarray(x.data)), x.name
        else:
            assert list(y.shape) == list(x.shape), x.name
            assert np.array_equal(np.asarray(y.data), np.asarray(x.data)), x.name
    tokens_a, tokens_b = _tokens(a), _tokens(b)
    image_id = hf_config["image_token_index"]
    if image_token:  # <image> is named where the original had a padding row (or a row was appended)
        assert tokens_b[image_id] == IMAGE_TOKEN
        assert tokens_b[:image_id] == tokens_a[:image_id] and tokens_b[image_id + 1:len(tokens_a)] == tokens_a[image_id + 1:]
    else:
        assert tokens_b == tokens_a

    want_onnx, got_onnx = _onnx_weights(tmp_path / "original"), _onnx_weights(tmp_path / "hf")
    assert got_onnx.keys() == want_onnx.keys()
    assert all(np.array_equal(got_onnx[k], v) for k, v in want_onnx.items())


@pytest.mark.parametrize("arch,vision_layout", [("llava-qwen2", "folder"), ("llava-llama", "embedded")])
def test_every_hf_key_style_presents_the_original_checkpoint(make_checkpoint, tmp_path, arch, vision_layout):
    src = make_checkpoint(arch=arch, vision_layout=vision_layout)
    want = LlavaCheckpoint.open(src)
    want_names = sorted(want.llm_tensor_names() + want.projector_tensor_names())
    for style in ("hf", "hf-v5"):
        got = LlavaCheckpoint.open(write_hf_checkpoint(src, tmp_path / style, style=style, image_token=False))
        assert (got.layout, got.hf_architecture, got.arch, got.llm_family) == (
            "llava-hf", want.hf_architecture, want.arch, want.llm_family)
        assert (got.select_layer, got.select_feature, got.rope_theta, got.num_kv_heads) == (
            want.select_layer, want.select_feature, want.rope_theta, want.num_kv_heads)
        assert sorted(got.llm_tensor_names() + got.projector_tensor_names()) == want_names
        assert all(torch.equal(got.get(n), want.get(n)) for n in want_names)
        assert got.vision.config == want.vision.config and got.vision.source == "embedded"
        assert sorted(got.vision.state_dict_names()) == sorted(want.vision.state_dict_names())
        assert all(torch.equal(got.vision.get(n), want.vision.get(n)) for n in want.vision.state_dict_names())
        start = want.tensors.get("model.embed_tokens.weight")[3:5]
        assert torch.equal(got.tensors.get_rows("model.embed_tokens.weight", 3, 5), start)  # the GGUF writer's read


def test_the_tower_config_is_the_one_the_hf_config_states(make_checkpoint, tmp_path):
    """The original embedded layout states no CLIP config (it is inferred from shapes); -hf states one."""
    hf = write_hf_checkpoint(make_checkpoint(), tmp_path / "hf", image_token=False)
    config = json.loads((hf / "config.json").read_text())
    config["vision_config"]["layer_norm_eps"] = 1e-6
    (hf / "config.json").write_text(json.dumps(config))
    assert LlavaCheckpoint.open(hf).vision.config["layer_norm_eps"] == 1e-6


def _published_hf_config(card_id: str) -> dict:
    """A published checkpoint's config as transformers' LlavaConfig.save_pretrained writes it."""
    original = PUBLISHED[card_id]
    family = "qwen2" if card_id == "huatuogpt-vision-7b" else "llama"
    text = {k: v for k, v in original.items() if not k.startswith("mm_") and k not in (
        "architectures", "model_type", "image_aspect_ratio")}
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": {**text, "model_type": family},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                          "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                          "projection_dim": 768},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
        "image_token_index": 151646 if family == "qwen2" else 64000, "tie_word_embeddings": False,
    }


@pytest.mark.parametrize("card_id", sorted(PUBLISHED))
def test_a_published_hf_config_is_identified_as_its_card(tmp_path, card_id):
    original, hf = tmp_path / "original", tmp_path / "hf"
    for folder, config in ((original, PUBLISHED[card_id]), (hf, _published_hf_config(card_id))):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    want, got = identify(original), identify(hf)
    assert (got.card.id if got.card else None, got.kind) == (card_id, "exact")
    assert (got.kind, got.reason) == (want.kind, want.reason)


def _hf_copy(make_checkpoint, tmp_path: Path) -> Path:
    return write_hf_checkpoint(make_checkpoint(), tmp_path / "hf", image_token=False)


def _edit_config(root: Path, **changes) -> None:
    config = json.loads((root / "config.json").read_text())
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    (root / "config.json").write_text(json.dumps(config))


def _edit_tensors(root: Path, edit) -> None:
    """Load every shard, apply `edit` to the state dict, write it back as one model.safetensors."""
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        state.update(load_file(str(shard)))
        shard.unlink()
    (root / "model.safetensors.index.json").unlink(missing_ok=True)
    edit(state)
    save_file(state, str(root / "model.safetensors"))


@pytest.mark.parametrize("changes,named", [
    ({"architectures": ["FooForConditionalGeneration"], "model_type": "foo"}, "FooForConditionalGeneration"),
    ({"vision_config__model_type": "siglip_vision_model"}, "siglip_vision_model"),
    ({"text_config__model_type": "mistral"}, "mistral"),
    ({"projector_hidden_act": "relu"}, "'relu'"),
    ({"vision_feature_layer": [-2, -5]}, "[-2, -5]"),
    ({"vision_feature_select_strategy": "cls"}, "'cls'"),
    ({"text_config__hidden_size": "sixty-four"}, "not a valid LLaVA config"),  # transformers' own check
])
def test_an_unknown_config_is_one_error_naming_what_was_found(make_checkpoint, tmp_path, changes, named):
    hf = _hf_copy(make_checkpoint, tmp_path)
    _edit_config(hf, **changes)
    with pytest.raises(HuatuoError) as err:
        LlavaCheckpoint.open(hf)
    assert named in str(err.value)
    res = CliRunner().invoke(cli, ["convert", "all", str(hf), str(tmp_path / "bundle")])
    assert res.exit_code == 1 and named in res.output and "Traceback" not in res.output
    assert not (tmp_path / "bundle").exists()


def _drop_projector(state):
    for name in [n for n in state if "multi_modal_projector" in n]:
        del state[name]


def _add_unknown(state):
    state["model.image_newline"] = torch.zeros(4)


def _store_twice(state):
    state["model.language_model.norm.weight"] = state["language_model.model.norm.weight"].clone()


@pytest.mark.parametrize("edit,named", [
    (_drop_projector, "no tensors of the projector (multi_modal_projector.linear_1/2.*)"),
    (_add_unknown, "model.image_newline"),
    (_store_twice, "language_model.model.norm.weight and model.language_model.norm.weight"),
])
def test_hf_tensors_that_do_not_fit_are_one_error_naming_them(make_checkpoint, tmp_path, edit, named):
    hf = _hf_copy(make_checkpoint, tmp_path)
    _edit_tensors(hf, edit)
    with pytest.raises(HuatuoError) as err:
        LlavaCheckpoint.open(hf)
    assert named in str(err.value)


def test_a_missing_language_model_tensor_is_named(make_checkpoint, tmp_path):
    hf = _hf_copy(make_checkpoint, tmp_path)
    _edit_tensors(hf, lambda state: state.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    res = CliRunner().invoke(cli, ["convert", "all", str(hf), str(tmp_path / "bundle")])
    assert res.exit_code == 1 and "model.layers.1.mlp.up_proj.weight" in res.output and "Traceback" not in res.output


def test_synth_writes_the_hf_layout(tmp_path):
    out = tmp_path / "tiny-hf"
    res = CliRunner().invoke(cli, ["convert", "synth", str(out), "--arch", "llava-llama", "--layout", "hf-v5",
                                   "--shards", "3"])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["text_config"]["model_type"] == "llama"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert "lm_head.weight" in index["weight_map"] and "model.vision_tower.embeddings.patch_embedding.weight" in index["weight_map"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-hf"]  # the original it was rewritten from is gone
    assert LlavaCheckpoint.open(out).layout == "llava-hf"


# -- the other layout variations of the published checkpoints (issue 19 item 3b) -------------------

def test_bf16_shards_with_an_index_read_as_one_file(make_checkpoint):
    sharded, single = LlavaCheckpoint.open(make_checkpoint(shards=3)), LlavaCheckpoint.open(make_checkpoint(shards=1))
    index = json.loads((sharded.root / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3 and not (single.root / "model.safetensors.index.json").exists()
    assert sorted(sharded.tensors.names()) == sorted(single.tensors.names())
    for name in single.tensors.names():
        tensor = sharded.get(name)
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, single.get(name)), name


def test_a_checkpoint_without_generation_config_converts(make_checkpoint, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(make_checkpoint(), src)
    (src / "generation_config.json").unlink()
    manifest = _convert(src, tmp_path / "bundle")
    assert manifest["model_card"]["card"] == "huatuogpt-vision-7b"
