"""Load llama.cpp with the fastest CPU kernels that are proven correct on this machine.

huatuo's llama-cpp-python build (packaging/llama_wheel.py) ships ggml's CPU backend once per x86-64
feature level (`libggml-cpu-x64.so` .. `libggml-cpu-sapphirerapids.so`). llama-cpp-python does not
load them itself (ggml looks beside the Python executable and in the current folder), so this
module does, before llama.cpp initialises:

1. rank the variants by ggml's own `ggml_backend_score()` (0 = this CPU lacks an instruction set);
2. for the best one, unless this machine and build already have a verdict (`cpu_verdicts`), run
   the self-test in a child process (`cpu_selftest`): batched decodes of tiny shipped GGUFs
   (Q4_K, Q6_K, Q8_0) without weight repacking, then with it (AMX, AVX2/AVX-512 layouts);
3. a child that dies (SIGSEGV from the GCC-miscompiled AMX kernel, SIGILL from an instruction the
   CPU lacks) or disagrees rules out that path: repacking off, or the next variant. One line on
   stderr says so, on the run that found it; `huatuo doctor` shows the verdict.

Weight repacking is used where it is AMX (the sapphirerapids variant, or a build whose one CPU
backend has AMX) and not elsewhere: on the AVX-512 and AVX2 variants it slowed Q4_K prefill by
25-35 % (1.5B-shaped model, Zen 4) for 15-25 % faster decoding, and on a CPU the time to first token
is prefill (README "llama.cpp CPU kernels").

Every process that runs llama.cpp (ask, batch, convert's verification, doctor, the benchmarks) gets
the library through `llama()`. Overrides, for benchmarks and support: HUATUO_CPU_VARIANT=haswell
(only that variant), HUATUO_CPU_REPACK=1 or 0 (repacking on or off whatever the variant),
HUATUO_CPU_VARIANTS_DIR (where to look for the variant libraries). The self-test still runs on what
is forced. Facts: docs/cpu.md.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from huatuo_cli.engine.cpu_verdicts import VerdictCache, cache_key, run_selftest
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

ENV_VARIANT = "HUATUO_CPU_VARIANT"
ENV_REPACK = "HUATUO_CPU_REPACK"
ENV_VARIANTS_DIR = "HUATUO_CPU_VARIANTS_DIR"
#: "0": `import llama_cpp` (huatuo's build) loads no backend (IMPORT_HOOK in packaging/llama_wheel.py)
ENV_AUTOLOAD = "HUATUO_LLAMA_AUTOLOAD"
#: in the name of a variant library: libggml-cpu-<name>.so
_VARIANT_FILE = re.compile(r"^libggml-cpu-(?P<name>[\w.-]+)\.so$")
#: the name given to the one CPU backend of a build without variants (e.g. a native pip build)
BUILTIN = "builtin"
#: written into the wheel by packaging/llama_wheel.py
BUILD_INFO = "huatuo_build.json"
#: variants whose weight repacking is AMX (ggml's CMake: sapphirerapids = ... AMX_TILE AMX_INT8)
AMX_VARIANTS = frozenset({"sapphirerapids"})


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path | None  # None: the build's built-in CPU backend
    score: int


@dataclass
class CpuBackend:
    """The CPU kernels this process runs llama.cpp with, and why."""

    build: str  # "portable" (variants chosen at run time) or "single" (one CPU library)
    build_info: dict[str, Any] | None
    variant: str
    repack: bool
    verdict: str  # "zen4, weight repacking off, ...; self-test passed": for doctor and the notice
    ranked: list[str] = field(default_factory=list)  # variants this CPU can run, best first
    tested: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> Verdict fields
    fallback: bool = False  # a faster path was ruled out by the self-test
    found_now: bool = False  # this run ran the self-test that ruled it out
    cache_key: str = ""  # this machine and build (`cpu_verdicts.cache_key`): the speed probe's cache key too

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ACTIVE: CpuBackend | None = None
#: True while `activate` imports llama_cpp (whose import calls `autoload`)
_ACTIVATING = False
#: llama.cpp's log goes through huatuo's logging (not when only a plain `import llama_cpp` activated)
_LOGS_ROUTED = False


def llama() -> ModuleType:
    """The `llama_cpp` module, with this machine's proven CPU backend loaded and repacking set."""
    activate()
    return require("llama_cpp")


def describe() -> str:
    """'zen4, repack on': the kernels this process runs llama.cpp with (for results and logs)."""
    backend = activate()
    return f"{backend.variant}, repack {'on' if backend.repack else 'off'}"


def activate(*, route_logs: bool = True) -> CpuBackend:
    """Choose, self-test (once per machine and build) and load the CPU backend; idempotent.

    `route_logs`: llama.cpp's log through huatuo's logging (quiet unless --verbose); off when a
    plain `import llama_cpp` asked (`autoload`), whose caller keeps llama-cpp-python's own logging.
    """
    global _ACTIVE, _ACTIVATING, _LOGS_ROUTED
    if _ACTIVE is not None and (_LOGS_ROUTED or not route_logs):
        return _ACTIVE
    _ACTIVATING = True  # importing huatuo's llama_cpp build calls `autoload`: nothing to do then
    try:
        llama_cpp = require("llama_cpp")
    finally:
        _ACTIVATING = False
    if route_logs and not _LOGS_ROUTED:  # also when a plain `import llama_cpp` activated first
        from huatuo_cli.logs import route_llama_cpp

        route_llama_cpp(llama_cpp)
        _LOGS_ROUTED = True
    if _ACTIVE is not None:
        return _ACTIVE
    _close_devnull_at_exit()
    lib_dir = Path(str(llama_cpp.__file__)).parent / "lib"
    variants_dir = Path(os.environ.get(ENV_VARIANTS_DIR) or lib_dir)
    backend = choose(rank_variants(variants_dir), build_info(lib_dir), variants_dir)
    if backend.build == "portable":
        path = variants_dir / f"libggml-cpu-{backend.variant}.so"
        if not load_variant(lib_dir, path):
            raise HuatuoError(f"llama.cpp could not load its CPU backend {path.name}")
        gpus = gpu_backends(variants_dir)  # a CUDA build (packaging/llama_wheel.py --cuda)
        if gpus:
            preload_cuda_libraries(nvidia_library_dirs())
        for gpu in gpus:
            load_variant(lib_dir, gpu)  # no driver or no GPU: it does not register, the CPU answers
    set_repack(llama_cpp, backend.repack)
    _ACTIVE = backend
    if backend.fallback and backend.found_now:
        print(f"huatuo: llama.cpp CPU kernels {backend.verdict}", file=sys.stderr)
    return backend


def autoload() -> None:
    """What huatuo's llama-cpp-python build runs at the end of `import llama_cpp` (IMPORT_HOOK in
    packaging/llama_wheel.py), so that llama-cpp-python's own API and server work beside huatuo:
    the portable build loads no CPU backend by itself, and `Llama(...)` would fail with "Failed to
    load model". Loads the backend `activate` chooses (self-tested once per machine and build);
    where that fails, says so and what to call instead of leaving a bare load failure for later."""
    # HUATUO_LLAMA_AUTOLOAD=0 is checked by the hook too; here again because the self-test child
    # relies on it: a child that chose a backend would run the self-test in a child of its own
    if _ACTIVE is not None or _ACTIVATING or os.environ.get(ENV_AUTOLOAD) == "0":
        return
    try:
        activate(route_logs=False)
    except HuatuoError as exc:
        print(f"llama_cpp: no CPU backend loaded ({exc}); run `huatuo doctor`, or load one with "
              "huatuo_cli.engine.cpu_backend.load_variant before creating a model", file=sys.stderr)


def _close_devnull_at_exit() -> None:
    """llama-cpp-python opens two /dev/null files at import for its stdout/stderr suppression (used
    only while a model or context is created) and never closes them: every run then ends with
    `ResourceWarning: unclosed file '/dev/null'`. They are closed at exit, when no model is made."""
    import atexit

    from llama_cpp import _utils

    def close() -> None:
        for name in ("outnull_file", "errnull_file"):
            handle = getattr(_utils, name, None)
            if handle is not None:
                handle.close()

    atexit.register(close)


def gpu_backends(folder: Path) -> list[Path]:
    """ggml's other loadable backends in the build (libggml-cuda.so, ...): not base, not CPU."""
    return [p for p in sorted(folder.glob("libggml-*.so")) if not p.name.startswith(("libggml-base", "libggml-cpu"))]


#: what ggml's CUDA backend links (packaging/llama_wheel.py --cuda), in load order: cuBLAS needs cuBLASLt
CUDA_LIBRARIES = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")


def nvidia_library_dirs() -> list[Path]:
    """The library folders of NVIDIA's wheels (nvidia-cuda-runtime, nvidia-cublas: site-packages/nvidia/
    cu13/lib), which the GPU artifact installs beside onnxruntime-gpu."""
    return sorted({d for entry in sys.path if entry for d in Path(entry).glob("nvidia/*/lib") if d.is_dir()})


def preload_cuda_libraries(folders: list[Path]) -> list[str]:
    """Load the CUDA runtime and cuBLAS from `folders` (the first that has each), so that dlopen of
    libggml-cuda.so finds them already loaded by soname: its own search path ($ORIGIN) does not reach
    another wheel's folder. One missing (a CPU artifact, or the wheels not installed) is left out; the
    CUDA backend then does not load and the CPU answers. Returns what was loaded."""
    loaded = []
    for name in CUDA_LIBRARIES:
        for folder in folders:
            if (folder / name).is_file():
                try:
                    ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue
                loaded.append(name)
                break
    return loaded


def load_variant(lib_dir: Path, path: Path) -> bool:
    """Register the backend library `path` (a CPU variant, or a GPU backend) with libllama's libggml.

    The wheel holds libggml as separate files (libggml.so, .so.0, ...; wheels have no symlinks), so
    it is found by its soname, which matches the copy libllama already loaded; opening another file
    would load a second ggml with an empty backend registry.
    """
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # ggml logs each backend it loads; Llama(verbose=True) turns logging back on
    try:
        ggml = ctypes.CDLL("libggml.so.0")
    except OSError:
        ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    return bool(ggml.ggml_backend_load(str(path).encode()))


def set_repack(llama_cpp: ModuleType, enabled: bool) -> None:
    """Every model llama-cpp-python loads from now on gets `use_extra_bufts = enabled`.

    llama_model_params.use_extra_bufts is llama.cpp's switch for weight repacking (AMX and the
    AVX2/AVX-512 layouts); `Llama` takes its params from `llama_model_default_params()`, so that
    function is wrapped once, in both places the package exposes it.
    """
    low = llama_cpp.llama_cpp
    original = getattr(low, "_huatuo_default_params", None) or low.llama_model_default_params
    low._huatuo_default_params = original

    def default_params() -> Any:
        params = original()
        params.use_extra_bufts = enabled
        return params

    low.llama_model_default_params = default_params
    llama_cpp.llama_model_default_params = default_params  # type: ignore[attr-defined]


def build_info(lib_dir: Path) -> dict[str, Any] | None:
    """What packaging/llama_wheel.py recorded about the installed build (None: another build)."""
    try:
        info: dict[str, Any] = json.loads((lib_dir.parent / BUILD_INFO).read_text())
        return info
    except (OSError, ValueError):
        return None


def rank_variants(folder: Path) -> list[Variant]:
    """Variant libraries in `folder` this CPU can run, best first, by ggml's own score.

    Each library is opened only to call its score function (as ggml's loader does), then closed.
    """
    import _ctypes

    found = []
    for path in sorted(folder.glob("libggml-cpu-*.so")):
        match = _VARIANT_FILE.match(path.name)
        if not match:
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        try:
            score_fn = getattr(lib, "ggml_backend_score", None)
            score = int(score_fn()) if score_fn is not None else 0
        finally:
            _ctypes.dlclose(lib._handle)
        if score > 0:
            found.append(Variant(match["name"], path, score))
    return sorted(found, key=lambda v: -v.score)


def wants_repack(variant: Variant) -> bool:
    """HUATUO_CPU_REPACK if set, else: repack where that means AMX (see the module's docstring)."""
    forced = os.environ.get(ENV_REPACK)
    if forced in ("0", "1"):
        return forced == "1"
    if variant.name == BUILTIN:
        info = require("llama_cpp").llama_print_system_info()
        return b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())
    return variant.name in AMX_VARIANTS


def choose(variants: list[Variant], info: dict[str, Any] | None, variants_dir: Path) -> CpuBackend:
    """The first variant (best first) whose self-test passes, with repacking if that passed too."""
    build = "portable" if variants else "single"
    if not variants:
        variants = [Variant(BUILTIN, None, 1)]
    ranked = [v.name for v in variants]
    forced = os.environ.get(ENV_VARIANT)
    if forced:
        variants = [v for v in variants if v.name == forced]
        if not variants:
            raise HuatuoError(f"{ENV_VARIANT}={forced}: no such CPU variant runs on this machine",
                              hint=f"one of: {', '.join(ranked)}")
    key = cache_key([(v.name, v.score) for v in variants], variants_dir, info.get("key") if info else None)
    cache = VerdictCache(key)
    tested: dict[str, dict[str, Any]] = {}
    ruled_out: list[str] = []
    found_now = False
    for variant in variants:
        verdict = cache.get(variant.name)
        if verdict is None:
            verdict = run_selftest(variant.path)
            cache.put(variant.name, verdict)
            found_now = True
        tested[variant.name] = asdict(verdict)
        want_repack = wants_repack(variant)
        if not verdict.usable:
            ruled_out.append(f"{variant.name} kernels {verdict.plain}")
            continue
        repack = want_repack and verdict.repack == "ok"
        if want_repack and not repack:
            ruled_out.append(f"{variant.name} with weight repacking {verdict.repack}")
        why = "" if want_repack else ", used only where it is AMX"
        sentence = f"{variant.name}, weight repacking {'on' if repack else 'off'}{why}; "
        sentence += f"self-test: {'; '.join(ruled_out)}; using the next correct path" if ruled_out else "self-test passed"
        return CpuBackend(build, info, variant.name, repack, sentence, ranked, tested,
                          fallback=bool(ruled_out), found_now=found_now, cache_key=key)
    raise HuatuoError("llama.cpp's CPU kernels failed their self-test on this machine: " + "; ".join(ruled_out),
                      hint="run `huatuo doctor` and report its output")


