"""Import optional heavy packages on demand, naming the extra that provides them.

The workstation install has neither torch nor transformers; a command that needs one must say
which extra to install instead of failing with a bare ImportError.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
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
    "starlette": "starlette (the web framework of `huatuo serve`)",
    "uvicorn": "uvicorn (the HTTP server of `huatuo serve`)",
}


#: system libraries the native packages load, and what provides them on the usual workstation systems
SYSTEM_LIBRARIES: dict[str, str] = {
    "libgomp.so.1": "GCC's OpenMP runtime: apt install libgomp1 (Debian, Ubuntu), dnf install libgomp (RHEL, Rocky, Alma)",
    "libstdc++.so.6": "the C++ runtime: apt install libstdc++6 (Debian, Ubuntu), dnf install libstdc++ (RHEL, Rocky, Alma)",
    "libgcc_s.so.1": "GCC's runtime: apt install libgcc-s1 (Debian, Ubuntu), dnf install libgcc (RHEL, Rocky, Alma)",
    "libssl.so.3": "OpenSSL 3: apt install libssl3 (Debian, Ubuntu), dnf install openssl-libs (RHEL, Rocky, Alma)",
    "libcrypto.so.3": "OpenSSL 3: apt install libssl3 (Debian, Ubuntu), dnf install openssl-libs (RHEL, Rocky, Alma)",
}
#: the libraries of huatuo's own llama.cpp build (llama_cpp/lib): missing means a damaged install
OWN_LIBRARIES = ("libggml", "libllama", "libmtmd")
#: what the dynamic loader says when a library cannot be used (dlerror texts)
_LOADER_PROBLEM = re.compile(
    r"(?P<lib>[\w.+-]+\.so[\w.]*): (?P<problem>cannot open shared object file|file too short|invalid ELF header"
    r"|wrong ELF class[^:]*)")
_SYMBOL_VERSION = re.compile(r"version `(?P<version>(GLIBC|GLIBCXX|CXXABI|GCC)_[\d.]+)' not found")


class NativeLibraryError(HuatuoError):
    """A package's native code could not be loaded: a system library is missing or too old. What
    the user can act on (install a system package), so a clear line, never a traceback."""


def native_failure(package: str, exc: BaseException) -> NativeLibraryError | None:
    """The clear error for a dynamic-loader failure behind `exc` (its chain included), or None."""
    text = " ".join(str(e) for e in _chain(exc))
    version = _SYMBOL_VERSION.search(text)
    if version:
        return NativeLibraryError(
            f"{package}'s native code needs {version['version']}, newer than this workstation's system libraries have",
            hint="install the huatuo package built for this system's age (packaging/README.md), or update the system")
    missing = _LOADER_PROBLEM.search(text)
    if missing is None:
        return None
    lib = missing["lib"].rsplit("/", 1)[-1]
    if lib.startswith(OWN_LIBRARIES):
        provider = f"{lib} comes with huatuo's llama.cpp build: reinstall huatuo (install.sh of the offline package)"
    else:
        provider = SYSTEM_LIBRARIES.get(lib, f"install the system package that provides {lib}, or reinstall huatuo")
    return NativeLibraryError(f"{package}'s native code could not be loaded: {lib} {missing['problem']}",
                              hint=provider)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


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
        hint += " (or 'huatuo-cli[gpu]' on a CUDA workstation, or 'huatuo-cli[openvino]' for OpenVINO on the CPU; only one)"
    return hint


def require(module: str) -> ModuleType:
    """Import `module` or raise HuatuoError naming the extra to install, or the system library that
    its native code could not load (`NativeLibraryError`)."""
    sigints: list[int] = []
    try:
        with _noting_sigint(sigints):
            imported = importlib.import_module(module)
    except (OSError, RuntimeError) as exc:  # ctypes loaders (llama-cpp-python) raise these
        native = native_failure(module.split(".")[0], exc)
        if native is None:
            raise
        raise native from exc
    except ImportError as exc:
        top = module.split(".")[0]
        native = native_failure(top, exc)  # an extension module's missing system library
        if native is not None and not (sigints or _interrupted(exc)):
            raise NativeLibraryError(f"the Python package '{top}' is installed but failed to load: {native.args[0]}",
                                     hint=native.hint) from exc
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
