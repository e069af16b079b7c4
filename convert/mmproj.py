"""`huatuo convert mmproj`: CLIP tower + projector as an mmproj GGUF for llama.cpp tools and Ollama.

Keys and tensor names follow llama.cpp's legacy `convert_image_encoder_to_gguf.py` (the only
upstream writer of LLaVA-1.5 `mlp` projector files; `convert_hf_to_gguf.py --mmproj` cannot) and
what `clip.cpp` of llama-cpp-python 0.3.36 reads:

- `clip.vision.feature_layer = [n + select + 1]` (non-negative index into hidden_states, element 0
  = embeddings) and `block_count` = that index, with only those blocks stored. Without
  `feature_layer` clip.cpp runs `block_count - 1` blocks: one layer short (llama.cpp #25817).
- `mlp.fc1` is stored as `ffn_down` and `fc2` as `ffn_up` (legacy naming; clip.cpp swaps them
  back for projector type `mlp`); `post_layernorm` is dropped (not on the LLaVA path); the patch
  convolution is always f16, as upstream writes it.

The file is written next to OUT under a temporary name and renamed when complete. Its fidelity
against the PyTorch reference is measured through mtmd and written to `OUT.fidelity.json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.atomic import atomic_output, refuse_existing, write_text_atomic
from huatuo_convert.checkpoint import QWEN_LAYOUT, LlavaCheckpoint

#: CLIPVisionModel state-dict name -> GGUF name; `None` = deliberately not written. Anything
#: not matched is an error: a tensor we do not understand must not be silently dropped.
TENSOR_MAP: list[tuple[str, str | None]] = [
    (r"vision_model\.embeddings\.class_embedding", "v.class_embd"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "v.patch_embd.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "v.position_embd.weight"),
    (r"vision_model\.embeddings\.position_ids", None),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"v.pre_ln.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"v.blk.\1.attn_q.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"v.blk.\1.attn_k.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"v.blk.\1.attn_v.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"v.blk.\1.attn_out.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"v.blk.\1.ln1.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"v.blk.\1.ln2.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"v.blk.\1.ffn_down.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"v.blk.\1.ffn_up.\2"),
]
FTYPES = {"f32": 0, "f16": 1}


def gguf_name(clip_name: str) -> str | None:
    for pattern, target in TENSOR_MAP:
        m = re.fullmatch(pattern, clip_name)
        if m:
            return None if target is None else m.expand(target)
    raise HuatuoError(f"vision tower tensor '{clip_name}' has no mmproj name", hint="unsupported vision tower")


def feature_layer(select_layer: int, n_layers: int) -> int:
    """LLaVA's select layer as clip.cpp's non-negative feature layer (legacy converter's formula)."""
    index = select_layer if select_layer >= 0 else n_layers + select_layer + 1
    if not 0 < index <= n_layers:
        raise HuatuoError(f"mm_vision_select_layer {select_layer} is out of range for {n_layers} layers")
    return index


def _tensor_data(tensor, gguf_target: str, ftype: str) -> np.ndarray:
    data = tensor.float().numpy()
    if data.ndim == 4 or (ftype == "f16" and gguf_target.endswith(".weight") and data.ndim == 2):
        return data.astype(np.float16)
    return data.astype(np.float32)


def write_mmproj(src: Path | str | LlavaCheckpoint, out: Path | str, *, ftype: str = "f16") -> Path:
    """Write the mmproj GGUF to `out` (must not exist); returns the path."""
    gguf = require("gguf")
    out = Path(out)
    refuse_existing(out, hint="choose a new file name or remove it")
    if ftype not in FTYPES:
        raise HuatuoError(f"unknown mmproj type '{ftype}'", hint=f"one of {', '.join(FTYPES)}")
    ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
    tower = ckpt.vision
    cfg = tower.config
    if ckpt.config.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise HuatuoError(f"projector type '{ckpt.config.get('mm_projector_type')}' has no mmproj mapping")
    if ckpt.select_feature != "patch":
        raise HuatuoError(f"mm_vision_select_feature '{ckpt.select_feature}' is not supported by llama.cpp's LLaVA graph")
    n_layers = int(cfg["num_hidden_layers"])
    keep = feature_layer(ckpt.select_layer, n_layers)
    mean = [float(x) for x in ckpt.preprocessor_config["image_mean"]]
    std = [float(x) for x in ckpt.preprocessor_config["image_std"]]

    out.parent.mkdir(parents=True, exist_ok=True)
    # existence was checked above with its own message; the temp file, fsync, rename and the
    # disk-full message are the converters' shared ones
    with atomic_output(out, force=True) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="clip")
        w.add_bool("clip.has_text_encoder", False)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_llava_projector", True)
        w.add_file_type(FTYPES[ftype])
        w.add_name(f"{ckpt.root.name} vision tower")
        w.add_description("image encoder for LLaVA (HuatuoGPT-Vision), written by huatuo convert mmproj")
        w.add_string("clip.projector_type", "mlp")
        w.add_uint32("clip.vision.image_size", int(cfg["image_size"]))
        w.add_uint32("clip.vision.patch_size", int(cfg["patch_size"]))
        w.add_uint32("clip.vision.embedding_length", int(cfg["hidden_size"]))
        w.add_uint32("clip.vision.feed_forward_length", int(cfg["intermediate_size"]))
        w.add_uint32("clip.vision.projection_dim", int(cfg.get("projection_dim", 768)))
        w.add_uint32("clip.vision.attention.head_count", int(cfg["num_attention_heads"]))
        w.add_float32("clip.vision.attention.layer_norm_epsilon", float(cfg.get("layer_norm_eps", 1e-5)))
        w.add_uint32("clip.vision.block_count", keep)
        w.add_array("clip.vision.feature_layer", [keep])
        w.add_array("clip.vision.image_mean", mean)
        w.add_array("clip.vision.image_std", std)
        w.add_bool("clip.use_gelu", cfg.get("hidden_act", "quick_gelu") == "gelu")
        for name in ckpt.projector_tensor_names():
            target = name.replace("model.mm_projector.", "mm.")
            w.add_tensor(target, _tensor_data(ckpt.get(name), target, ftype))
        for name in tower.state_dict_names():
            if not name.startswith("vision_model."):
                continue
            target = gguf_name(name)
            if target is None:
                continue
            m = re.match(r"v\.blk\.(\d+)\.", target)
            if m and int(m.group(1)) >= keep:
                continue  # past the feature layer: never run
            data = tower.get(name)
            if data.ndim == 1 and target == "v.class_embd":
                data = data.reshape(-1)
            w.add_tensor(target, _tensor_data(data, target, ftype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def measure_mmproj(mmproj: Path | str, src: Path | str | LlavaCheckpoint, *, threads: int = 2) -> dict:
    """Cosine and max abs diff per validation image of mtmd's embeddings against the reference.

    Both sides see identical pixels: huatuo's geometric preprocessing to the tower's size, then
    each side normalises. Token i is compared with token i, as the LLM would receive them.
    """
    torch = require("torch")
    from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder
    from huatuo_cli.engine.preprocess import PreprocessConfig, prepare_image, preprocess
    from huatuo_convert.onnx_validate import embedding_metrics, validation_images
    from huatuo_convert.reference import VisionEncoder, build_vision

    ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
    config = PreprocessConfig.from_dict(ckpt.preprocessor_config)
    named = validation_images(config.crop_height)
    images = [img for _, img in named]
    reference = VisionEncoder(*build_vision(ckpt), ckpt.select_layer, ckpt.select_feature)
    with torch.no_grad():
        expected = reference(torch.from_numpy(preprocess(images, config))).numpy()
    with MtmdImageEncoder(mmproj, threads=threads) as enc:
        got = enc.encode_prepared([prepare_image(img, config) for img in images])
    if got.shape != expected.shape:
        raise HuatuoError(f"mmproj gives embeddings {got.shape}, the reference {expected.shape}")
    metrics = embedding_metrics(expected, got)
    cosines = [m["cosine"] for m in metrics]
    return {
        "reference": "huatuo_convert.reference.VisionEncoder (PyTorch fp32)",
        "engine": "llama.cpp mtmd (llama-cpp-python), CPU",
        "mean_cosine": float(np.mean(cosines)),
        "min_cosine": float(np.min(cosines)),
        "max_abs_diff": float(max(m["max_abs_diff"] for m in metrics)),
        "images": [{"name": n, **m} for (n, _), m in zip(named, metrics, strict=True)],
        "upstream_defects": ["llama.cpp#25814 (CLS token concatenated last)",
                             "llama.cpp#25817 (one layer short without feature_layer; set here)"],
    }


def fidelity_path(mmproj: Path | str) -> Path:
    """`mmproj-f16.gguf` -> `mmproj-f16.fidelity.json` (the sidecar the bundle manifest reads)."""
    mmproj = Path(mmproj)
    return mmproj.with_name(mmproj.stem + ".fidelity.json")


def convert_mmproj(src: Path | str | LlavaCheckpoint, out: Path | str, *, ftype: str = "f16", threads: int = 2,
                   sidecar: bool = True) -> dict:
    """Write the mmproj, load it in llama.cpp's mtmd, measure it, write the sidecar (unless
    `sidecar=False`: the bundle builder keeps the figures in manifest.json); all or nothing."""
    out = Path(out)
    record = fidelity_path(out)
    if sidecar:
        refuse_existing(record, hint="choose a new file name or remove it")
    ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
    if ckpt.layout == QWEN_LAYOUT:
        raise HuatuoError("a Qwen2.5-VL checkpoint's mmproj is written by `huatuo convert all`: llama.cpp's mtmd "
                          "needs the converted language model to load and measure it",
                          hint="run huatuo convert all; the bundle holds mmproj-f16.gguf and its figures")
    write_mmproj(ckpt, out, ftype=ftype)
    try:
        report = {"file": out.name, "type": ftype, **measure_mmproj(out, ckpt, threads=threads)}
        if sidecar:
            write_text_atomic(record, json.dumps(report, indent=2))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return report
