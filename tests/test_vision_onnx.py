"""`huatuo convert vision` and the runtime ImageEncoder against the PyTorch reference."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.engine.encoder import ImageEncoder
from huatuo_cli.engine.providers import CPU
from huatuo_cli.errors import HuatuoError
from huatuo_convert.onnx_export import export_vision
from huatuo_convert.onnx_validate import Tolerance, embedding_metrics, validation_images
from huatuo_convert.reference import LlavaReference
from tests.conftest import LAYOUTS
from tests.preprocess_reference import official, sample_images

#: Dimensions no other test uses (the issue's "Done when"): 3 heads, 5x5 patches, odd widths.
UNSEEN = dict(vision_hidden_size=192, vision_intermediate_size=320, vision_layers=4, image_size=70,
              hidden_size=96, intermediate_size=200, num_heads=6, num_kv_heads=2, seed=11)


@pytest.fixture(scope="module")
def exported(make_checkpoint, tmp_path_factory):
    cache = {}

    def export(**fields):
        key = tuple(sorted(fields.items()))
        if key not in cache:
            src = make_checkpoint(**fields)
            cache[key] = (src, export_vision(src, tmp_path_factory.mktemp("onnx") / "vision").out)
        return cache[key]

    return export


def reference_embeds(src, images):
    """Official preprocessing (transformers) + PyTorch reference embeddings."""
    ref = LlavaReference.load(src)
    raw = ref.ckpt.preprocessor_config
    pixels = torch.from_numpy(official(images, raw))
    return ref.image_embeds(pixels).numpy()


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_export_writes_validated_files_and_sidecar(exported, arch, layout):
    src, out = exported(arch=arch, vision_layout=layout)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["preprocessor_config.json", "vision-fp16.onnx", "vision-fp32.onnx", "vision-int8.onnx",
                     "vision.fidelity.json"]
    fid = json.loads((out / "vision.fidelity.json").read_text())
    assert fid["output"]["shape"] == ["N", 16, 64] and fid["input"]["shape"] == ["N", 3, 56, 56]
    for name, bound in (("vision-fp32.onnx", 0.99999), ("vision-fp16.onnx", 0.999), ("vision-int8.onnx", 0.999)):
        rep = fid["files"][name]
        assert rep["passed"] and rep["tolerance"]["min_cosine"] == bound
        assert len(rep["images"]) == len(validation_images(56)) == 4
        assert all(img["cosine"] >= bound for img in rep["images"])
    assert fid["files"]["vision-fp32.onnx"]["max_abs_diff"] < 1e-4
    assert not list(out.parent.glob(".vision.*"))  # no temporary folder left


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_encoder_matches_reference(exported, arch, layout):
    src, out = exported(arch=arch, vision_layout=layout)
    images = sample_images()
    expected = reference_embeds(src, images)
    for name in ("vision-fp32.onnx", "vision-fp16.onnx"):
        enc = ImageEncoder(out / name, device="cpu")
        assert enc.provider == CPU and enc.fallback_note is None
        got = enc.encode(images)
        assert got.dtype == np.float32 and got.shape == expected.shape
        cosines = [m["cosine"] for m in embedding_metrics(expected, got)]
        assert min(cosines) >= (0.99999 if "fp32" in name else 0.9999), cosines


def test_unseen_dimensions_reach_issue_bound(exported):
    src, out = exported(**UNSEEN)
    images = sample_images()
    expected = reference_embeds(src, images)
    assert expected.shape == (len(images), 25, 96)
    enc = ImageEncoder.from_folder(out, device="auto")
    got = enc.encode(images)
    assert min(m["cosine"] for m in embedding_metrics(expected, got)) >= 0.9999
    # more images than one TensorRT profile allows are encoded in chunks, same result
    many = enc.encode(images * 2)
    assert np.allclose(many[: len(images)], many[len(images):], atol=1e-6)


def test_wrong_select_layer_fails_validation_and_leaves_nothing(make_checkpoint, tmp_path):
    out = tmp_path / "vision"
    with pytest.raises(HuatuoError, match="does not match the PyTorch reference.*vision-fp32.onnx: min cosine"):
        export_vision(make_checkpoint(), out, select_layer=-1)
    assert list(tmp_path.iterdir()) == []


def test_impossible_tolerance_fails(make_checkpoint, tmp_path):
    with pytest.raises(HuatuoError, match="vision-fp16.onnx: min cosine"):
        export_vision(make_checkpoint(), tmp_path / "v", tolerances={"fp16": Tolerance(min_cosine=0.99999, max_abs_diff=1e-7)})
    assert list(tmp_path.iterdir()) == []


def test_cli_exports(make_checkpoint, tmp_path):
    res = CliRunner().invoke(cli, ["convert", "vision", str(make_checkpoint(vision_layout="folder")), str(tmp_path / "v"),
                                   "--no-fp16"])
    assert res.exit_code == 0, res.output
    assert re.search(r"vision-fp32.onnx: min cosine (1\.0000000|0\.99999\d\d), max abs diff", res.output), res.output
    assert not (tmp_path / "v" / "vision-fp16.onnx").exists()


def test_cli_errors_without_traceback(make_checkpoint, tmp_path):
    runner = CliRunner()
    src = tmp_path / "m"
    shutil.copytree(make_checkpoint(vision_layout="folder"), src)
    shutil.rmtree(src / "vit")
    res = runner.invoke(cli, ["convert", "vision", str(src), str(tmp_path / "out")])
    assert res.exit_code == 1 and "Error: vision tower not found" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()

    (tmp_path / "taken").mkdir()
    res = runner.invoke(cli, ["convert", "vision", str(make_checkpoint()), str(tmp_path / "taken")])
    assert res.exit_code == 1 and f"Error: {tmp_path / 'taken'} already exists" in res.output


def test_encoder_rejects_a_missing_file(tmp_path):
    with pytest.raises(HuatuoError, match="image encoder vision-fp32.onnx not found"):
        ImageEncoder(tmp_path / "vision-fp32.onnx")
