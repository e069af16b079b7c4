"""`huatuo convert mmproj`: the GGUF loads in llama.cpp's mtmd, and its fidelity is measured.

The cosine to the reference is poor by design of upstream (llama.cpp #25814: CLS concatenated
last). To show the file itself is right, mtmd's output is also compared with a PyTorch re-enactment
of exactly that upstream graph: they must agree closely.
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder
from huatuo_cli.engine.preprocess import PreprocessConfig, prepare_image, preprocess
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.mmproj import feature_layer, write_mmproj
from huatuo_convert.onnx_validate import embedding_metrics, validation_images
from huatuo_convert.reference import build_vision
from tests.conftest import LAYOUTS


def llama_cpp_llava_graph(ckpt: LlavaCheckpoint, pixels: torch.Tensor) -> torch.Tensor:
    """clip.cpp's LLaVA graph of llama-cpp-python 0.3.36 (models/llava.cpp), defects included."""
    clip, proj = build_vision(ckpt)
    keep = feature_layer(ckpt.select_layer, len(clip.encoder.layers))
    emb = clip.embeddings
    with torch.no_grad():
        patches = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.expand(pixels.shape[0], 1, -1)
        x = torch.cat([patches, cls], dim=1) + emb.position_embedding.weight[None]  # CLS last (#25814)
        x = clip.pre_layrnorm(x)
        for layer in clip.encoder.layers[:keep]:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        feats = x[:, 1:]  # rows 1..n_patches: patch 0 dropped, CLS kept
        return proj[2](torch.nn.functional.gelu(proj[0](feats), approximate="tanh"))


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_mmproj_keys_and_tensors(make_checkpoint, tmp_path, arch, layout):
    src = make_checkpoint(arch=arch, vision_layout=layout)
    path = write_mmproj(src, tmp_path / "mmproj.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["general.architecture"] == "clip"
    assert fields["clip.projector_type"] == "mlp"
    assert fields["clip.has_vision_encoder"] is True and fields["clip.use_gelu"] is False
    assert fields["clip.vision.feature_layer"] == [2] and fields["clip.vision.block_count"] == 2  # 3 layers, -2
    assert fields["clip.vision.image_size"] == 56 and fields["clip.vision.attention.head_count"] == 2
    assert np.allclose(fields["clip.vision.image_mean"], [0.48145466, 0.4578275, 0.40821073])
    names = {t.name for t in reader.tensors}
    for n in ("v.patch_embd.weight", "v.class_embd", "v.position_embd.weight", "v.pre_ln.weight", "v.pre_ln.bias",
              "mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"):
        assert n in names
    for i in (0, 1):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out", "ln1", "ln2", "ffn_up", "ffn_down"):
            assert {f"v.blk.{i}.{part}.weight", f"v.blk.{i}.{part}.bias"} <= names
    assert not any(n.startswith("v.blk.2.") or n.startswith("v.post_ln") for n in names)
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("arch,layout", [LAYOUTS[0], LAYOUTS[3]])
def test_mmproj_loads_in_mtmd_and_is_exactly_the_upstream_graph(make_checkpoint, tmp_path, arch, layout):
    src = make_checkpoint(arch=arch, vision_layout=layout)
    ckpt = LlavaCheckpoint.open(src)
    path = write_mmproj(ckpt, tmp_path / "mmproj.gguf", ftype="f32")
    config = PreprocessConfig.from_dict(ckpt.preprocessor_config)
    images = [img for _, img in validation_images(56)]
    with MtmdImageEncoder(path) as enc:
        got = enc.encode_prepared([prepare_image(img, config) for img in images])
    simulated = llama_cpp_llava_graph(ckpt, torch.from_numpy(preprocess(images, config))).numpy()
    assert got.shape == simulated.shape == (4, 16, 64)
    assert min(m["cosine"] for m in embedding_metrics(simulated, got)) >= 0.999


def test_cli_writes_mmproj_and_measured_sidecar(make_checkpoint, tmp_path):
    out = tmp_path / "mmproj-f16.gguf"
    res = CliRunner().invoke(cli, ["convert", "mmproj", str(make_checkpoint(vision_layout="folder")), str(out)])
    assert res.exit_code == 0, res.output
    assert "loads in llama.cpp mtmd" in res.output
    report = json.loads((tmp_path / "mmproj-f16.fidelity.json").read_text())
    cosines = [img["cosine"] for img in report["images"]]
    assert len(cosines) == 4 and all(-1.0 <= c <= 1.0 for c in cosines)
    assert report["mean_cosine"] == pytest.approx(float(np.mean(cosines)))
    assert report["max_abs_diff"] > 0 and report["type"] == "f16"

    res = CliRunner().invoke(cli, ["convert", "mmproj", str(make_checkpoint(vision_layout="folder")), str(out)])
    assert res.exit_code == 1 and "already exists" in res.output and "Traceback" not in res.output


def test_cli_without_vision_tower(make_checkpoint, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(make_checkpoint(vision_layout="folder"), src)
    shutil.rmtree(src / "vit")
    res = CliRunner().invoke(cli, ["convert", "mmproj", str(src), str(tmp_path / "x.gguf")])
    assert res.exit_code == 1 and "Error: vision tower not found" in res.output
    assert list(tmp_path.iterdir()) == [src]


def test_unknown_tower_tensor_is_an_error():
    from huatuo_cli.errors import HuatuoError
    from huatuo_convert.mmproj import gguf_name

    assert gguf_name("vision_model.encoder.layers.3.mlp.fc1.weight") == "v.blk.3.ffn_down.weight"
    assert gguf_name("vision_model.post_layernorm.bias") is None
    with pytest.raises(HuatuoError, match="has no mmproj name"):
        gguf_name("vision_model.encoder.layers.0.self_attn.rel_pos")
