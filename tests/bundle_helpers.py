"""Hand-made bundles: a manifest over tiny stand-in files (a GGUF header, bytes for the ONNX graph)
that load_bundle verifies; nothing in them can answer."""

from __future__ import annotations

from pathlib import Path

from huatuo_cli.bundles.bundle import Manifest, describe_files, write_manifest

CONFIG_SHA = "0" * 64


ROLES = {"llm.gguf": "llm", "vision/vision-fp32.onnx": "vision-fp32", "vision/preprocessor_config.json": "preprocessor"}


def tiny_gguf(path: Path, *, quant: str = "f16", arch: str = "qwen2") -> Path:
    """A GGUF header with the `huatuo.*` keys the converter writes (no tensors: nothing loads it)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("huatuo.quantization", quant)
    writer.add_string("huatuo.architecture", "llava-qwen2")
    writer.add_string("huatuo.prompt_format", "huatuo-v1")
    writer.add_string("huatuo.source.architecture", "LlavaQwen2ForCausalLM")
    writer.add_string("huatuo.source.config_sha256", CONFIG_SHA)
    writer.add_string("huatuo.tokenizer.markers", "text")
    writer.add_string("huatuo.padding", "p" * 16000)  # room for the flipped-byte offsets below
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_bundle(root: Path, roles: dict[str, str] = ROLES) -> Path:
    root.mkdir(parents=True)
    tiny_gguf(root / "llm.gguf")
    (root / "vision").mkdir()
    (root / "vision" / "vision-fp32.onnx").write_bytes(b"onnx" * 1000)
    (root / "vision" / "preprocessor_config.json").write_text('{"crop_size": 336}')
    files = describe_files(root, roles)
    write_manifest(root, Manifest(bundle_name="test", architecture="llava-qwen2",
                                  source={"config_sha256": CONFIG_SHA, "hf_architecture": "LlavaQwen2ForCausalLM"},
                                  prompt_format="huatuo-v1", quantization="f16", files=files,
                                  fidelity={"llm": {"top1": 1.0}}))
    return root
