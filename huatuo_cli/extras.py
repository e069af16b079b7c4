"""Import optional heavy packages on demand, naming the extra that provides them.

The workstation install has neither torch nor transformers; a command that needs one must say
which extra to install instead of failing with a bare ImportError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from huatuo_cli.errors import HuatuoError

#: module name -> the pip extra of huatuo-cli that installs it
EXTRA_FOR_MODULE: dict[str, str] = {
    "torch": "convert",
    "transformers": "convert",
    "safetensors": "convert",
    "sentencepiece": "convert",
    "tokenizers": "convert",
    "onnx": "convert",
    "optimum": "convert",
    "peft": "train",
    "accelerate": "train",
    "onnxruntime": "cpu",
    "llama_cpp": "cpu",
    "libjpeg": "dicom-gpl",
    "huatuo_convert": "convert",
}


def require(module: str) -> ModuleType:
    """Import `module` or raise HuatuoError naming the extra to install."""
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRA_FOR_MODULE.get(top)
        if extra is None:
            raise
        hint = f"pip install 'huatuo-cli[{extra}]'"
        if top == "onnxruntime":
            hint += " (or 'huatuo-cli[gpu]' on a CUDA workstation; never both)"
        raise HuatuoError(
            f"this command needs the Python package '{top}', which is not installed ({exc})",
            hint=hint,
        ) from exc
    if module.split(".")[0] == "onnxruntime":
        from huatuo_cli.offline import disable_telemetry

        disable_telemetry()  # before any session: a caller may have imported onnxruntime before huatuo
    return imported
