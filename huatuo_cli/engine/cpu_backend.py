"""Load llama.cpp with the fastest CPU kernels that are proven correct on this machine.

huatuo's llama-cpp-python build (packaging/llama_wheel.py) ships ggml's CPU backend once per x86-64
feature level (`libggml-cpu-haswell.so` .. `libggml-cpu-sapphirerapids.so`). llama-cpp-python does
not load them itself (ggml looks beside the Python executable and in the current folder), so this
module does, before llama.cpp initialises:

1. rank the variants by ggml's own `ggml_backend_score()` (0 = this CPU lacks an instruction set);
2. for the best one, unless this machine and build already have a verdict, run a self-test in a
   child process: batched decodes of tiny shipped GGUFs (Q4_K, Q6_K, Q8_0) first without weight
   repacking, then with it (AMX and the AVX2/AVX-512 repacked layouts), compared to each other;
3. a child that dies (SIGSEGV from the GCC-miscompiled AMX kernel, SIGILL from an instruction the
   CPU lacks) or disagrees rules out that path: repacking off, or the next variant. One line on
   stderr says so, on the run that found it; the verdict is cached per machine and build
   (`~/.cache/huatuo/cpu-selftest.json`) and shown by `huatuo doctor`.

Every process that runs llama.cpp (ask, batch, convert's verification, doctor, the benchmarks) gets
the library through `llama()`. Overrides, for benchmarks and support: HUATUO_CPU_VARIANT=haswell
(only that variant), HUATUO_CPU_REPACK=0 (no repacking), HUATUO_CPU_VARIANTS_DIR (where to look for
the variant libraries). The self-test still runs on what is forced.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from types import ModuleType

import platformdirs

from huatuo_cli import APP_NAME
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

ENV_VARIANT = "HUATUO_CPU_VARIANT"
ENV_REPACK = "HUATUO_CPU_REPACK"
ENV_VARIANTS_DIR = "HUATUO_CPU_VARIANTS_DIR"
#: in the name of a variant library: libggml-cpu-<name>.so
_VARIANT_FILE = re.compile(r"^libggml-cpu-(?P<name>[\w.-]+)\.so$")
#: the name given to the one CPU backend of a build without variants (e.g. a native pip build)
BUILTIN = "builtin"
BUILD_INFO = "huatuo_build.json"
SELFTEST_TIMEOUT_S = 120
#: tiny GGUFs in huatuo_cli/data that the self-test decodes (packaging/make_selftest_models.py)
SELFTEST_MODELS = ("selftest-q4_k_m.gguf", "selftest-q8_0.gguf")
#: bump when the self-test changes, so that old verdicts are not trusted
SELFTEST_VERSION = 1


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path | None  # None: the build's built-in CPU backend
    score: int


@dataclass
class Verdict:
    """What the self-test child showed for one variant: 'ok', 'died (SIGSEGV)', 'mismatch ...'."""

    plain: str
    repack: str
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.plain == "ok"


@dataclass
class CpuBackend:
    """The CPU kernels this process runs llama.cpp with, and why."""

    build: str  # "portable" (variants chosen at run time) or "single" (one CPU library)
    build_info: dict | None
    variant: str
    repack: bool
    verdict: str  # one sentence for doctor and the notice
    ranked: list[str] = field(default_factory=list)  # variants this CPU can run, best first
    tested: dict[str, dict] = field(default_factory=dict)  # variant -> Verdict fields
    fallback: bool = False  # a faster path was ruled out by the self-test

    def as_dict(self) -> dict:
        return asdict(self)


_ACTIVE: CpuBackend | None = None


def llama() -> ModuleType:
    """The `llama_cpp` module, with this machine's proven CPU backend loaded and repacking set."""
    activate()
    return require("llama_cpp")


def describe() -> str:
    """'zen4, repack on': the kernels this process runs llama.cpp with (for results and logs)."""
    backend = activate()
    return f"{backend.variant}, repack {'on' if backend.repack else 'off'}"


def activate() -> CpuBackend:
    """Choose, self-test (once per machine and build) and load the CPU backend; idempotent."""
    global _ACTIVE
    if _ACTIVE is not None:
        return _ACTIVE
    llama_cpp = require("llama_cpp")
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    variants_dir = Path(os.environ.get(ENV_VARIANTS_DIR) or lib_dir)
    variants = rank_variants(variants_dir)
    backend = choose(variants, build_info(lib_dir), variants_dir)
    if backend.build == "portable":
        path = variants_dir / f"libggml-cpu-{backend.variant}.so"
        if not load_variant(lib_dir, path):
            raise HuatuoError(f"llama.cpp could not load its CPU backend {path.name}")
    set_repack(llama_cpp, backend.repack)
    _ACTIVE = backend
    if backend.fallback and backend.tested.get(backend.variant, {}).get("fresh"):
        print(f"huatuo: {backend.verdict}", file=sys.stderr)
    return backend


def load_variant(lib_dir: Path, path: Path) -> bool:
    """Register the CPU variant library `path` with the libggml that libllama uses.

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

    def default_params():
        params = original()
        params.use_extra_bufts = enabled
        return params

    low.llama_model_default_params = default_params
    llama_cpp.llama_model_default_params = default_params


def build_info(lib_dir: Path) -> dict | None:
    """What packaging/llama_wheel.py recorded about the installed build (None: another build)."""
    path = lib_dir.parent / BUILD_INFO
    try:
        return json.loads(path.read_text())
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cache_key(variants: list[Variant], variants_dir: Path, info: dict | None) -> str:
    """This machine (CPU model, the features ggml sees) and this build (the libraries' identity)."""
    identity = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(variants_dir.glob("libggml*.so"))]
    blob = json.dumps([SELFTEST_VERSION, _cpu_model(), [(v.name, v.score) for v in variants], identity,
                       info and info.get("key")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cache_path() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "cpu-selftest.json"


def _load_cache(key: str) -> dict:
    try:
        data = json.loads(_cache_path().read_text())
        return data.get("verdicts", {}) if data.get("key") == key else {}
    except (OSError, ValueError):
        return {}


def _save_cache(key: str, verdicts: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "verdicts": verdicts}, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache costs a self-test per run, nothing else


def choose(variants: list[Variant], info: dict | None, variants_dir: Path) -> CpuBackend:
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
    want_repack = os.environ.get(ENV_REPACK, "1") != "0"
    key = cache_key(variants, variants_dir, info)
    verdicts = _load_cache(key)
    tested: dict[str, dict] = {}
    ruled_out: list[str] = []
    for variant in variants:
        record = verdicts.get(variant.name)
        if record is None:
            record = asdict(run_selftest(variant)) | {"fresh": True}
            verdicts[variant.name] = {k: v for k, v in record.items() if k != "fresh"}
            _save_cache(key, verdicts)
        tested[variant.name] = record
        verdict = Verdict(record["plain"], record["repack"], record.get("detail", ""))
        if not verdict.usable:
            ruled_out.append(f"{variant.name} kernels {verdict.plain}")
            continue
        repack = want_repack and verdict.repack == "ok"
        if want_repack and not repack:
            ruled_out.append(f"{variant.name} with weight repacking {verdict.repack}")
        sentence = f"llama.cpp CPU kernels {variant.name}, weight repacking {'on' if repack else 'off'}"
        if ruled_out:
            sentence += f" (self-test: {'; '.join(ruled_out)}; using the next correct path)"
        else:
            sentence += " (self-test passed)"
        return CpuBackend(build, info, variant.name, repack, sentence, ranked, tested, fallback=bool(ruled_out))
    raise HuatuoError("llama.cpp's CPU kernels failed their self-test on this machine: " + "; ".join(ruled_out),
                      hint="run `huatuo doctor` and report its output")


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_selftest(variant: Variant) -> Verdict:
    """Run `huatuo_cli.engine.cpu_selftest` in a child for `variant`; a crash is a verdict, not ours."""
    data = resources.files("huatuo_cli").joinpath("data")
    models = [str(data.joinpath(name)) for name in SELFTEST_MODELS]
    cmd = [sys.executable, "-m", "huatuo_cli.engine.cpu_selftest", str(variant.path or ""), *models]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Verdict("timed out", "not run")
    stages = {}
    for line in proc.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        stages[item.get("stage")] = item
    died = f"died ({_signal_name(proc.returncode)})" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
    plain = stages.get("plain", {}).get("result") or died
    repack = stages.get("repack", {}).get("result") or (died if plain == "ok" else "not run")
    detail = "" if proc.returncode == 0 else proc.stderr.strip()[-300:]
    return Verdict(plain, repack, detail)
