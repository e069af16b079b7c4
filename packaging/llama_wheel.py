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
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

VERSION = "0.3.36"
#: Everything passed to CMake. Changing any of it changes the cache key, hence a new build.
CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF",  # no -march=native: the wheel must run on every x86-64 CPU
    "-DGGML_BACKEND_DL=ON",  # CPU backends are libraries chosen at run time ...
    "-DGGML_CPU_ALL_VARIANTS=ON",  # ... one per x86-64 feature level (x64 .. sapphirerapids)
    "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib",  # install them beside libllama.so in the wheel
    "-DCMAKE_C_FLAGS=-fno-dse",  # GCC 12 drops the AMX tile-config stores under RTL DSE
    "-DCMAKE_CXX_FLAGS=-fno-dse",
)
#: Added for a GPU server's build (`--cuda ARCHS`): ggml's CUDA backend as one more loadable library,
#: for the GPU architectures given (e.g. "80;89;90"). Needs the CUDA toolkit (nvcc) on the build machine.
CUDA_FLAGS = ("-DGGML_CUDA=ON",)
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


def compiler_identity() -> str:
    """First line of the C++ compiler's version: another compiler is another binary."""
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"llama_wheel: no C++ compiler ({cxx}): {exc}; install build-essential")
    return out.splitlines()[0].strip()


def cmake_flags(cuda_archs: str | None = None) -> list[str]:
    flags = list(CMAKE_FLAGS)
    if cuda_archs:
        flags += [*CUDA_FLAGS, f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs}"]
    return flags


def build_key(cuda_archs: str | None = None) -> dict:
    """What the wheel's bytes depend on, and its short hash (the cache folder's name)."""
    info = {
        "package": "llama-cpp-python",
        "version": VERSION,
        "cmake_flags": cmake_flags(cuda_archs),
        "compiler": compiler_identity(),
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
_RIP_LOAD = re.compile(r"\bv?mov\w*\s+0x[0-9a-f]+\(%rip\),(%\w+)\s+#\s+([0-9a-f]+)")
_REG_STORE = re.compile(r"\bv?mov\w*\s+(%\w+|\$0x[0-9a-f]+),(0x[0-9a-f]+|)\(%rsp\)")
_WIDTH = {"x": 16, "y": 32, "z": 64, "r": 8, "e": 4}


def tile_configs(disassembly: str, read: Callable[[int, int], bytes]) -> list[bytes]:
    """The 64 bytes each `ldtilecfg OFF(%rsp)` loads, rebuilt from the stores before it.

    Stores of registers loaded from .rodata (`mov ADDR(%rip),%reg` ... `mov %reg,OFF(%rsp)`) take
    their bytes from the library itself (`read(address, size)`); immediates are taken as written.
    """
    configs = []
    for base, before in _tile_loads(disassembly):
        config = bytearray(64)
        loaded: dict[str, bytes] = {}
        for prev in before:
            if m := _RIP_LOAD.search(prev):
                reg = m.group(1).lstrip("%")
                loaded[reg] = read(int(m.group(2), 16), _WIDTH.get(reg[0], 8))
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
        env = dict(os.environ, CMAKE_ARGS=" ".join(info["cmake_flags"]),
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        out = work / "wheel"
        print(f"llama_wheel: building llama-cpp-python {VERSION} for every x86-64 CPU (key {info['key']}); "
              "this takes a while once", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", str(src),
                        "-w", str(out)], env=env, check=True)
        wheel = next(out.glob("*.whl"))
        _verify_wheel(wheel, work / "check")
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / (wheel.name + ".part")
        shutil.copy2(wheel, staged)
        os.replace(staged, folder / wheel.name)
        (folder / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        return folder / wheel.name


def _verify_wheel(wheel: Path, scratch: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        variants = [n for n in names if re.search(r"llama_cpp/lib/libggml-cpu-[\w.-]+\.so$", n)]
        if len(variants) < 2 or f"llama_cpp/{BUILD_INFO}" not in names:
            sys.exit(f"llama_wheel: {wheel.name} lacks the CPU variant libraries or build info: {variants}")
        amx = f"llama_cpp/lib/{AMX_VARIANT}"
        if amx in names:
            zf.extract(amx, scratch)
            verdict = check_amx_library(scratch / amx)
            if verdict.startswith("BROKEN"):
                sys.exit(f"llama_wheel: {verdict}")
            print(f"llama_wheel: AMX kernel tile configuration: {verdict}", file=sys.stderr)


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
