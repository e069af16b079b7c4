"""Qwen2.5-VL's vision tower + merger as llama.cpp's own `qwen2.5vl_merger` mmproj, and how close
llama.cpp's mtmd path comes to transformers with it (docs/model.md "Qwen2.5-VL", "Which vision path: measured").

Keys and tensor names are those llama.cpp's `convert_hf_to_gguf.py --mmproj` writes for
Qwen2.5-VL checkpoints (its `conversion/qwenvl.py`, in the llama-cpp-python 0.3.36
sdist): names from gguf's own MMPROJ tensor map, the fused `qkv` split into q, k, v, the Conv3d
patch embedding split into its two temporal Conv2d kernels (`v.patch_embd.weight` and `.weight.1`),
`clip.vision.n_wa_pattern` = the first full-attention block + 1 (the blocks must be evenly spaced).
The bundle's answers come from the ONNX graph; this file is for llama.cpp tools and for the measurement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huatuo_cli.engine.qwen_vision import QwenVisionConfig
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.atomic import atomic_output
from huatuo_convert.checkpoint import QWEN_VISUAL_PREFIX, LlavaCheckpoint
from huatuo_convert.mmproj import FTYPES

PROJECTOR_TYPE = "qwen2.5vl_merger"


def _wa_pattern(fullatt: list[int]) -> int:
    pattern = fullatt[0] + 1
    if any(b - a != pattern for a, b in zip(fullatt, fullatt[1:], strict=False)):
        raise HuatuoError(f"full-attention blocks {fullatt} are not evenly spaced: llama.cpp's Qwen2.5-VL graph cannot run them")
    return pattern


def _tensors(ckpt: LlavaCheckpoint, depth: int) -> list[tuple[str, Any]]:
    """(GGUF name, float32 array) for every tower tensor, in the checkpoint's order."""
    gguf = require("gguf")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, depth)
    out: list[tuple[str, Any]] = []
    for name in ckpt.tensors.names():
        if not name.startswith(QWEN_VISUAL_PREFIX):
            continue
        data = ckpt.get(name).float().numpy()
        if name.endswith("patch_embed.proj.weight"):  # Conv3d [out, in, 2, p, p] -> two Conv2d kernels
            out += [("v.patch_embd.weight", data[:, :, 0]), ("v.patch_embd.weight.1", data[:, :, 1])]
            continue
        parts = [(name, data)]
        if ".attn.qkv." in name:
            q, k, v = np.split(data, 3, axis=0)
            parts = [(name.replace("qkv", "q"), q), (name.replace("qkv", "k"), k), (name.replace("qkv", "v"), v)]
        for part, array in parts:
            base, _, suffix = part.rpartition(".")
            target = names.get_name(base)
            if target is None:
                raise HuatuoError(f"vision tower tensor '{part}' has no mmproj name", hint="unsupported vision tower")
            out.append((f"{target}.{suffix}", array))
    return out


def write_qwen_mmproj(ckpt: LlavaCheckpoint, out: Path, *, ftype: str = "f16") -> Path:
    gguf = require("gguf")
    vc = ckpt.config["vision_config"]
    pre = ckpt.preprocessor_config
    depth = int(vc["depth"])
    with atomic_output(Path(out)) as tmp:
        w = gguf.GGUFWriter(str(tmp), "clip")
        w.add_type(gguf.GGUFType.MMPROJ)
        w.add_file_type(FTYPES[ftype])
        w.add_name(f"{ckpt.root.name} vision tower")
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.projector_type", PROJECTOR_TYPE)
        w.add_uint32("clip.vision.projection_dim", int(ckpt.config["hidden_size"]))
        w.add_uint32("clip.vision.image_size", int(vc.get("image_size", 560)))
        w.add_uint32("clip.vision.patch_size", int(vc["patch_size"]))
        w.add_uint32("clip.vision.embedding_length", int(vc["hidden_size"]))
        w.add_uint32("clip.vision.feed_forward_length", int(vc["intermediate_size"]))
        w.add_uint32("clip.vision.block_count", depth)
        w.add_uint32("clip.vision.attention.head_count", int(vc["num_heads"]))
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
        w.add_array("clip.vision.image_mean", [float(x) for x in pre["image_mean"]])
        w.add_array("clip.vision.image_std", [float(x) for x in pre["image_std"]])
        limits = QwenVisionConfig.from_dict(pre)  # the checkpoint's pixel limits, not mtmd's defaults
        w.add_uint32("clip.vision.image_min_pixels", limits.min_pixels)
        w.add_uint32("clip.vision.image_max_pixels", limits.max_pixels)
        w.add_bool("clip.use_silu", True)
        w.add_uint32("clip.vision.n_wa_pattern", _wa_pattern(list(vc["fullatt_block_indexes"])))
        for name, array in _tensors(ckpt, depth):
            matrix = array.ndim >= 2 and ftype == "f16"
            w.add_tensor(name, array.astype(np.float16 if matrix else np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return Path(out)


def measure_qwen_mmproj(mmproj: Path, ref: Any, llm_gguf: Path, *, threads: int = 2) -> dict[str, Any]:
    """mtmd's image embeddings against transformers' tower, image by image, on identical pixels: each
    validation image resized by huatuo's (transformers') smart_resize first, so that neither side resizes."""
    from huatuo_cli.engine.cpu_backend import llama
    from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder
    from huatuo_cli.engine.qwen_vision import smart_resize, to_rgb
    from huatuo_convert.onnx_validate import embedding_metrics
    from huatuo_convert.qwen_vision_export import validation_set

    config = QwenVisionConfig.from_dict(ref.ckpt.preprocessor_config)
    rows: list[dict[str, Any]] = []
    text = llama().Llama(str(llm_gguf), n_ctx=256, verbose=False)  # mtmd tokenizes the image's marker tokens with it
    with MtmdImageEncoder(mmproj, threads=threads, text_model=text) as enc:
        for name, image in validation_set(config):
            image = to_rgb(image)
            h, w = smart_resize(image.height, image.width, config.factor, config.min_pixels, config.max_pixels)
            image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
            expected = ref.image_embeds([image])[0]
            got = enc.encode_prepared([np.asarray(image)])[0]
            if got.shape != expected.shape:
                rows.append({"name": name, "size": [w, h], "shape_mismatch": [list(got.shape), list(expected.shape)]})
                continue
            rows.append({"name": name, "size": [w, h], **embedding_metrics(expected[None], got[None])[0]})
    compared = [r for r in rows if "cosine" in r]
    cosines = [float(r["cosine"]) for r in compared]
    diffs = [float(r["max_abs_diff"]) for r in compared]
    return {"reference": "transformers Qwen2_5_VisionTransformerPretrainedModel (PyTorch fp32)",
            "engine": "llama.cpp mtmd (llama-cpp-python), CPU",
            "mean_cosine": float(np.mean(cosines)) if cosines else float("nan"),
            "min_cosine": min(cosines, default=float("nan")),
            "max_abs_diff": max(diffs, default=float("nan")),
            "shape_mismatches": len(rows) - len(compared), "images": rows}

