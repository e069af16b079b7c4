"""The synthetic checkpoints have the real layout, and the PyTorch reference runs on all of them."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.engine.prompt import Turn, render
from huatuo_cli.errors import HuatuoError
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.reference import LlavaReference
from tests.conftest import LAYOUTS


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_layout_matches_huatuogpt_vision(make_checkpoint, arch, layout):
    root = make_checkpoint(arch=arch, vision_layout=layout)
    config = json.loads((root / "config.json").read_text())
    assert config["architectures"] == [{"llava-qwen2": "LlavaQwen2ForCausalLM", "llava-llama": "LlavaLlamaForCausalLM"}[arch]]
    for key in ("mm_vision_tower", "mm_projector_type", "mm_hidden_size", "mm_vision_select_layer",
                "mm_vision_select_feature", "image_aspect_ratio", "rope_theta"):
        assert key in config
    index = json.loads((root / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    ckpt = LlavaCheckpoint.open(root)
    assert ckpt.vision.source == layout
    assert (root / ("tokenizer.json" if arch == "llava-qwen2" else "tokenizer.model")).is_file()


def test_same_seed_same_bytes_other_seed_other_bytes(make_checkpoint, tmp_path):
    a = make_checkpoint(seed=3, shards=1)
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", "synth", str(tmp_path / "b"), "--seed", "3", "--shards", "1"])
    assert res.exit_code == 0, res.output
    assert (a / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    res = runner.invoke(cli, ["convert", "synth", str(tmp_path / "c"), "--seed", "4", "--shards", "1"])
    assert (a / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_reference_splices_image_embeddings(make_checkpoint, arch, layout):
    ref = LlavaReference.load(make_checkpoint(arch=arch, vision_layout=layout))
    prompt = render([Turn("Is there a pleural effusion? 胸腔积液", images=2)])
    pixels = torch.randn(2, 3, 56, 56)
    embeds, ids = ref.prompt_embeds(prompt, pixels)
    images = ref.image_embeds(pixels)
    n_img = images.shape[1]
    assert n_img == (56 // 14) ** 2  # patch tokens only: CLS dropped
    start = ids.index(-200)
    assert torch.equal(embeds[0, start:start + n_img], images[0])
    assert ids.count(-200) == 2 * n_img
    logits = ref.logits(embeds)
    assert logits.shape == (len(ids), ref.ckpt.config["vocab_size"])
    # the image changes the answer: a different image, different last-position logits
    other, _ = ref.prompt_embeds(prompt, torch.randn(2, 3, 56, 56))
    assert not torch.allclose(ref.logits(other)[-1], logits[-1])


def test_select_layer_is_hidden_states_index(make_checkpoint):
    """-2 indexes the tuple whose element 0 is the embedding output (LLaVA semantics)."""
    ref = LlavaReference.load(make_checkpoint())
    px = torch.randn(1, 3, 56, 56)
    out = ref.vision.clip(px, output_hidden_states=True)
    assert len(out.hidden_states) == ref.ckpt.vision.config["num_hidden_layers"] + 1
    assert torch.equal(ref.vision.features(px), out.hidden_states[-2][:, 1:])


def test_unknown_architecture_is_a_user_error(make_checkpoint, tmp_path):
    import shutil
    root = tmp_path / "m"
    shutil.copytree(make_checkpoint(), root)
    cfg = json.loads((root / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HuatuoError, match="unknown architecture MistralForCausalLM"):
        LlavaCheckpoint.open(root)


def test_missing_vision_tower_names_what_was_looked_for(make_checkpoint, tmp_path):
    import shutil
    root = tmp_path / "m"
    shutil.copytree(make_checkpoint(vision_layout="folder"), root)
    shutil.rmtree(root / "vit")
    with pytest.raises(HuatuoError, match="vision tower not found.*vit/clip_vit_large_patch14_336"):
        LlavaCheckpoint.open(root).vision  # noqa: B018  (the property raises)


def test_rope_theta_read_in_both_config_styles(make_checkpoint, tmp_path):
    import shutil
    root = tmp_path / "m"
    shutil.copytree(make_checkpoint(), root)
    cfg = json.loads((root / "config.json").read_text())
    theta = cfg.pop("rope_theta")
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta * 2}
    (root / "config.json").write_text(json.dumps(cfg))
    assert LlavaCheckpoint.open(root).rope_theta == theta * 2
