"""Every wheel a workstation gets loads on glibc 2.28 (RHEL/Rocky/Alma 8, Ubuntu 20.04) with only the
manylinux system libraries (issue 26): `auditwheel show` decides, the build refuses a newer wheel, and
huatuo's own llama.cpp wheel is built so (zig for glibc 2.28, no OpenMP, no OpenSSL)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from elftools.elf.elffile import ELFFile

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "packaging" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


llama_wheel = _load("llama_wheel")
build_offline = _load("build_offline")
#: where `make install` cached the wheel, read before conftest points XDG_CACHE_HOME at a temp folder
BUILT = llama_wheel.cache_root() / f"{llama_wheel.VERSION}-{llama_wheel.build_key()['key']}"

#: a library calling pthread_create: its symbol version is the glibc the library was linked for
SOURCE = "#include <pthread.h>\nstatic void *run(void *a) { return a; }\n" \
         "int start(void) { pthread_t t; return pthread_create(&t, 0, run, 0); }\n"


def _wheel(folder: Path, glibc: str, needs: str | None = None, name: str | None = None) -> Path:
    """A platform wheel `name` holding one library built by zig against glibc `glibc`'s symbol versions
    (and linked to a library `needs` that the wheel does not hold)."""
    (folder / "src.c").write_text(SOURCE)
    lib, zig = folder / "libdemo.so", [*llama_wheel._zig(), "cc", "-target", f"x86_64-linux-gnu.{glibc}"]
    other = []
    if needs:
        subprocess.run([*zig, "-shared", "-fPIC", f"-Wl,-soname,{needs}", "-o", str(folder / needs),
                        str(folder / "src.c")], check=True, capture_output=True)
        other = ["-Wl,--no-as-needed", str(folder / needs)]
    subprocess.run([*zig, "-shared", "-fPIC", "-o", str(lib), str(folder / "src.c"), *other], check=True,
                   capture_output=True)
    name = name or f"demo{glibc.replace('.', '')}" + ("cuda" if needs else "")
    return _pack(folder, name, {f"{name}/__init__.py": b"", f"{name}/lib/{lib.name}": lib.read_bytes()})


def _pack(folder: Path, name: str, contents: dict[str, bytes]) -> Path:
    files = {**contents,
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                                           b"Tag: py3-none-linux_x86_64\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{name}-1.0.dist-info/RECORD,,\n"
    wheel = folder / f"{name}-1.0-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return wheel


@pytest.mark.parametrize("tag,glibc", [("manylinux_2_28_x86_64", (2, 28)), ("manylinux_2_35_x86_64", (2, 35)),
                                        ("manylinux2014_x86_64", (2, 17)), ("manylinux1_x86_64", (2, 5)),
                                        ("linux_x86_64", None)])
def test_platform_tags_name_their_glibc(tag, glibc):
    assert llama_wheel.glibc_needed(tag) == glibc


def test_the_build_refuses_a_wheel_linked_for_a_newer_glibc(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    _wheel(old, "2.28")
    _wheel(new, "2.34")
    build_offline.refuse_newer_than_the_floor(old)  # passes
    with pytest.raises(SystemExit) as refused:
        build_offline.refuse_newer_than_the_floor(new)
    assert "demo234-1.0-py3-none-linux_x86_64.whl needs glibc 2.34" in str(refused.value)
    build_offline.refuse_newer_than_the_floor(new, "80")  # the CUDA artifact's floor is 2.35


def test_only_the_cuda_artifact_may_need_nvidias_libraries(tmp_path):
    """The CUDA build's backend links the CUDA runtime: allowed in the CUDA artifact when one of its NVIDIA
    wheels brings it, refused without that wheel and in the CPU artifact."""
    _wheel(tmp_path, "2.28", needs="libcudart.so.13")
    runtime = (tmp_path / "libcudart.so.13").read_bytes()
    for stray in tmp_path.glob("lib*"):
        stray.unlink()  # only the wheel remains: the library it needs is nowhere here
    with pytest.raises(SystemExit) as refused:
        build_offline.refuse_newer_than_the_floor(tmp_path, "80;89;90")
    assert "needs libraries outside the manylinux set: libcudart.so.13" in str(refused.value)
    _pack(tmp_path, "nvidia_cuda_runtime", {"nvidia/cu13/lib/libcudart.so.13": runtime})
    build_offline.refuse_newer_than_the_floor(tmp_path, "80;89;90")
    with pytest.raises(SystemExit) as refused:
        build_offline.refuse_newer_than_the_floor(tmp_path)
    assert "needs libraries outside the manylinux set: libcudart.so.13" in str(refused.value)


def test_the_cuda_libraries_allowed_are_the_ones_huatuo_loads():
    from huatuo_cli.engine import cpu_backend

    assert llama_wheel.CUDA_LIBRARIES == cpu_backend.CUDA_LIBRARIES


def test_huatuos_llama_wheel_loads_on_glibc_2_28_without_openmp_or_openssl():
    """The wheel `make install` built and installed here (from its cache folder: never rebuilt by a test)."""
    wheels = sorted(BUILT.glob("*.whl"))
    assert wheels, f"no llama.cpp wheel in {BUILT}: run `make install`"
    wheel = wheels[0]
    assert wheel.name.endswith(f"-{llama_wheel.PLATFORM_TAG}.whl")
    assert llama_wheel.loads_on_glibc(wheel) is None
    needed: dict[str, set[str]] = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith(".so") or ".so." in name:
                dynamic = ELFFile(io.BytesIO(zf.read(name))).get_section_by_name(".dynamic")
                needed[name] = {tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"}
    assert any("libggml-cpu-" in name for name in needed), sorted(needed)
    unwanted = {name: libs & {"libgomp.so.1", "libssl.so.3", "libcrypto.so.3", "libstdc++.so.6"}
                for name, libs in needed.items()}
    assert not any(unwanted.values()), f"the engine still links {unwanted}"
