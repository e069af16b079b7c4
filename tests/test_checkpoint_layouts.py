"""Issue 11 item 9: every CLIP vision-tower layout `from_pretrained` accepts converts to the same tower.

The synthetic checkpoint's CLIP folder (transformers 4 layout, `vision_model.*` names) is rewritten
as transformers 5's `CLIPVisionModel.save_pretrained` stores it (bare `embeddings.*`/`encoder.*`),
as a full `CLIPModel` with `text_model.*` beside it, and as a pickle `.bin`; each must give the
same reference vision tower, tensor for tensor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch  # the convert extra (make install): missing fails, never skips
from safetensors.torch import load_file, save_file

from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.reference import build_vision
from huatuo_convert.synth import VISION_FOLDER


def _rewrite_tower(src: Path, dst: Path, layout: str) -> Path:
    shutil.copytree(src, dst)
    folder = dst / VISION_FOLDER
    (shard,) = folder.glob("*.safetensors")
    state = load_file(str(shard))
    shard.unlink()
    config = json.loads((folder / "config.json").read_text())
    if layout == "bare":  # transformers 5 CLIPVisionModel.save_pretrained
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
        config = {**config["vision_config"], "model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"]}
    elif layout == "clipmodel":  # a full CLIPModel: the text tower must be ignored
        state["text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 4)
        state["text_projection.weight"] = torch.zeros(4, 4)
        state["logit_scale"] = torch.zeros(())
    (folder / "config.json").write_text(json.dumps(config))
    if layout == "pickle":
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}  # bare and pickled
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return dst


def _weights(ckpt: LlavaCheckpoint) -> dict[str, torch.Tensor]:
    clip, _ = build_vision(ckpt)
    return {k: v.clone() for k, v in clip.state_dict().items()}


@pytest.mark.parametrize("layout", ["bare", "clipmodel", "pickle"])
def test_every_clip_tower_layout_gives_the_same_tower(make_checkpoint, tmp_path, layout):
    src = make_checkpoint(vision_layout="folder")
    want = _weights(LlavaCheckpoint.open(src))
    ckpt = LlavaCheckpoint.open(_rewrite_tower(src, tmp_path / "model", layout), allow_pickle=layout == "pickle")
    got = _weights(ckpt)
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
