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
    "peft": "train",
    "accelerate": "train",
    "onnxruntime": "cpu",
    "libjpeg": "dicom-gpl",
    "huatuo_convert": "convert",
}

#: core dependencies (always installed with huatuo-cli): missing means a broken install, not an extra
CORE_MODULES: dict[str, str] = {
    "llama_cpp": "llama-cpp-python (huatuo's portable build, packaging/llama_wheel.py)",
}


def install_hint(module: str) -> str | None:
    """What to install for a missing `module`: its extra, or a repair for a core dependency."""
    top = module.split(".")[0]
    if top in CORE_MODULES:
        return (f"{CORE_MODULES[top]} comes with huatuo-cli itself; reinstall huatuo "
                "(install.sh of the offline package, or `make install` from a checkout)")
    extra = EXTRA_FOR_MODULE.get(top)
    if extra is None:
        return None
    hint = f"pip install 'huatuo-cli[{extra}]'"
    if top == "onnxruntime":
        hint += " (or 'huatuo-cli[gpu]' on a CUDA workstation; never both)"
    return hint


def require(module: str) -> ModuleType:
    """Import `module` or raise HuatuoError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = install_hint(top)
        if hint is None:
            raise
        raise HuatuoError(
            f"this command needs the Python package '{top}', which is not installed ({exc})",
            hint=hint,
        ) from exc
