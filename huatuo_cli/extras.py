"""Import optional heavy packages on demand, naming the extra that provides them.

The workstation install has neither torch nor transformers; a command that needs one must say
which extra to install instead of failing with a bare ImportError.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

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
    "cryptography": "sign",
    "ray": "cluster",
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
    sigints: list[int] = []
    try:
        with _noting_sigint(sigints):
            imported = importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = install_hint(top)
        if hint is None:
            raise
        # Ctrl-C while a native extension initialises reaches us as an ImportError (onnxruntime:
        # "import numpy failed", its C++ init having swallowed the KeyboardInterrupt): an interrupt
        if sigints or _interrupted(exc):
            raise KeyboardInterrupt from exc
        if _installed(top):  # installed, but it would not load: say so, not "install it"
            raise HuatuoError(f"the Python package '{top}' is installed but failed to load ({exc})",
                              hint=f"reinstall it ({hint.replace('pip install', 'pip install --force-reinstall')})") from exc
        raise HuatuoError(
            f"this command needs the Python package '{top}', which is not installed ({exc})",
            hint=hint,
        ) from exc

    if module.split(".")[0] == "onnxruntime":
        from huatuo_cli.offline import disable_telemetry

        disable_telemetry()  # before any session: a caller may have imported onnxruntime before huatuo
    return imported


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is behind this import failure (in its cause/context chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _installed(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # ValueError: a half-initialised module left in sys.modules
        return True


@contextmanager
def _noting_sigint(seen: list[int]) -> Iterator[None]:
    """Record any SIGINT that arrives (then handle it as before): native code may turn the
    KeyboardInterrupt into something else, but not the fact that the signal came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def note(signum: int, frame: Any) -> None:
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
