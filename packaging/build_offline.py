"""Build the air-gapped artifact: one folder (and its tarball) that installs huatuo with no network.

    python packaging/build_offline.py dist                      # demo bundle included
    python packaging/build_offline.py dist --bundle /bundles/huatuo-7b-q4_k_m --bundle /bundles/other

dist/huatuo-offline-<version>-linux-x86_64/ holds
  wheelhouse/          huatuo's wheel and every runtime dependency for Linux x86-64 (manylinux) and
                       each CPython of PYTHONS, the portable llama-cpp-python wheel among them
                       (packaging/llama_wheel.py); pure wheels are shared
  requirements-cpXY.lock  for each CPython X.Y: one `name==version --hash=sha256:...` line per wheel
                       that Python installs (pip --require-hashes); install.sh picks its Python's
  bundles/<name>/      model bundles, as `huatuo convert all` wrote them
  sbom.cdx.json        CycloneDX SBOM of the environment the build Python's lock installs (cyclonedx-py)
  install.sh           verify everything, then install (packaging/README.md)
  README.md            the deployment guide
  MANIFEST.sha256      sha256 of every other file (`sha256sum -c` format)

The workstation wheelhouse is the `cpu` extra only: no torch, transformers or other server
packages (checked here). Built in a hidden folder beside the output and renamed into place.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

from huatuo_cli.bundles.bundle import sha256_file

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "packaging"
#: never in a workstation install (server side only; `ray`, the `cluster` extra, runs on cluster nodes)
SERVER_ONLY = ("torch", "transformers", "optimum", "peft", "accelerate", "onnx", "safetensors", "sentencepiece", "ray")
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")
#: the workstation CPythons: one wheelhouse, one lock each (requirements-cp310.lock, ...). 3.9 cannot be:
#: pydicom 3.0 needs 3.10 (packaging/README.md)
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: the CUDA artifact's: onnxruntime-gpu for CUDA 13 (1.31 and later) publishes no CPython 3.10 wheel, so a GPU
#: workstation needs 3.11 or newer (install.sh reads the supported ones from the locks present)
GPU_PYTHONS = ("3.11", "3.12", "3.13")
def platforms(glibc: str) -> tuple[str, ...]:
    """The platforms pip may pick wheels for, newest first: manylinux tags from the artifact's glibc floor
    (2.28 for the CPU artifact: RHEL 8, Debian 10, Ubuntu 18.10; 2.35 for the CUDA one, whose llama.cpp
    wheel is built for it) down to manylinux1."""
    floor_minor = int(glibc.split(".")[1])
    return (*(f"manylinux_2_{minor}_x86_64" for minor in range(floor_minor, 16, -1)), "manylinux2014_x86_64",
            "manylinux2010_x86_64", "manylinux1_x86_64")


def _version() -> str:
    text = (ROOT / "huatuo_cli" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _llama_wheel_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_wheel", HERE / "llama_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _llama_wheel(cuda_archs: str | None) -> Path:
    module = _llama_wheel_module()
    return module.build(module.build_key(cuda_archs), None)


#: what a GPU workstation's system provides beside the wheelhouse: the NVIDIA driver's libcuda, and TensorRT
#: where IT installs it (ONNX Runtime's TensorRT provider needs it; without it the CUDA provider answers)
GPU_SYSTEM_LIBRARIES = frozenset({"libcuda.so.1", "libnvinfer.so.10", "libnvonnxparser.so.10"})


def nvidia_wheel_libraries(folder: Path) -> set[str]:
    """The libraries NVIDIA's wheels in `folder` bring (nvidia_*: the CUDA runtime, cuBLAS, cuDNN, ...)."""
    found: set[str] = set()
    for wheel in folder.glob("nvidia_*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            found |= {name.rsplit("/", 1)[-1] for name in zf.namelist() if re.search(r"/lib[^/]*\.so[.\d]*$", name)}
    return found


def refuse_newer_than_the_floor(folder: Path, cuda_archs: str | None = None) -> None:
    """Every wheel a workstation gets must load on the artifact's glibc floor (2.28 for the CPU artifact:
    RHEL/Rocky/Alma 8, Ubuntu 20.04; the CUDA one's is its llama.cpp build's, docs/deploy.md) with only
    the manylinux libraries (`auditwheel show`): a newer one would fail there long after the build. The
    CUDA artifact's wheels may also need what its NVIDIA wheels bring, the driver and TensorRT."""
    module = _llama_wheel_module()
    glibc = module.floor(cuda_archs)
    provided = tuple(sorted(nvidia_wheel_libraries(folder) | GPU_SYSTEM_LIBRARIES)) if cuda_archs else ()
    refused = [why for wheel in sorted(folder.glob("*.whl")) if (why := module.loads_on_glibc(wheel, glibc, provided))]
    if refused:
        sys.exit(f"build_offline: refused, the floor is glibc {glibc}:\n  " + "\n  ".join(refused))


def wheelhouse(out: Path, cuda_archs: str | None = None) -> dict[str, list[Path]]:
    """huatuo's wheel, the portable llama.cpp wheel, and what `huatuo-cli[cpu,sign]` needs, as wheels
    for every CPython in PYTHONS (with `cuda_archs`: the CUDA llama.cpp build and `huatuo-cli[gpu,sign]`,
    i.e. onnxruntime-gpu). One folder: pure wheels are shared. Returns each Python's wheels (its lock)."""
    out.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    shutil.copy2(_llama_wheel(cuda_archs), out)
    (ours,) = out.glob("huatuo_cli-*.whl")
    per_python: dict[str, list[Path]] = {}
    for version in GPU_PYTHONS if cuda_archs else PYTHONS:
        tag = "cp" + version.replace(".", "")
        with tempfile.TemporaryDirectory(prefix=f"huatuo-{tag}-") as tmp:
            # --find-links: llama-cpp-python==0.3.36 resolves to the portable wheel, never to PyPI's sdist
            download = [*pip, "download", "-q", "-d", tmp, "--find-links", str(out), "--only-binary=:all:",
                        "--python-version", version, "--implementation", "cp", "--abi", tag,
                        *[arg for tag_ in platforms(_llama_wheel_module().floor(cuda_archs))
                          for arg in ("--platform", tag_)]]
            subprocess.run([*download, f"{ours}[{_extra(cuda_archs)}]"], check=True)
            # pip evaluates `python_version` markers for the Python it runs on, not --python-version: what
            # the target Python needs besides (tomli, exceptiongroup on 3.10) is fetched until nothing is missing
            while missing := _marker_only_needs(Path(tmp), version, _extra(cuda_archs).split(",")):
                subprocess.run([*download, *missing], check=True)
            wheels = []
            for wheel in sorted(Path(tmp).glob("*.whl")):
                if not wheel.name.endswith(".whl") or not _WHEEL_NAME.match(wheel.name):
                    sys.exit(f"build_offline: not a wheel: {wheel.name}")
                if not (out / wheel.name).exists():
                    shutil.copy2(wheel, out)
                elif sha256_file(out / wheel.name) != sha256_file(wheel):
                    sys.exit(f"build_offline: two different files named {wheel.name}")
                wheels.append(out / wheel.name)
        per_python[tag] = wheels
    names = {_WHEEL_NAME.match(w.name)["name"].lower().replace("_", "-") for w in out.glob("*.whl")}
    leaked = sorted(names & set(SERVER_ONLY))
    if leaked:
        sys.exit(f"build_offline: server-only packages in the workstation wheelhouse: {leaked}")
    unused = sorted(w.name for w in out.glob("*.whl") if not any(w in ws for ws in per_python.values()))
    if unused:
        sys.exit(f"build_offline: wheels no Python's lock uses: {unused}")
    refuse_newer_than_the_floor(out, cuda_archs)
    return per_python


def _marker_only_needs(folder: Path, version: str, our_extras: list[str]) -> list[str]:
    """The requirements of the wheels in `folder` that CPython `version` on Linux needs and that are
    not there (by name): those whose markers pip, running on another Python, judged false."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = dict(default_environment(), python_version=version, python_full_version=f"{version}.0",
               implementation_name="cpython", platform_python_implementation="CPython", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix")
    have = {canonicalize_name(_WHEEL_NAME.match(w.name)["name"]) for w in folder.glob("*.whl")}
    missing = []
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
            text = zf.read(metadata).decode("utf-8")
        extras = our_extras if wheel.name.startswith("huatuo_cli-") else []
        for line in text.split("\n\n", 1)[0].splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            wanted = req.marker is None or any(req.marker.evaluate(dict(env, extra=e)) for e in ["", *extras])
            if wanted and canonicalize_name(req.name) not in have:
                missing.append(f"{req.name}{req.specifier}")
    return sorted(set(missing))


def _extra(cuda_archs: str | None) -> str:
    """The workstation's extras: one ONNX Runtime, and `sign` (cryptography) so that a workstation
    IT pins a key on (`install.sh --trust-key`) can check bundle signatures without a network."""
    return ("gpu" if cuda_archs else "cpu") + ",sign"


def write_lock(wheels: list[Path], lock: Path, extra: str = "cpu") -> None:
    lines = []
    for wheel in wheels:
        m = _WHEEL_NAME.match(wheel.name)
        name = m["name"].replace("_", "-")
        extras = f"[{extra}]" if name == "huatuo-cli" else ""
        lines.append(f"{name}{extras}=={m['version']} --hash=sha256:{sha256_file(wheel)}")
    lock.write_text(f"# pip install --no-index --find-links wheelhouse --require-hashes -r {lock.name}\n"
                    + "\n".join(lines) + "\n")


def _lock_name(tag: str) -> str:
    return f"requirements-{tag}.lock"


def _this_python() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def demo_bundle(work: Path) -> Path:
    """The demo's bundle (`make demo`): a tiny random checkpoint, converted and verified."""
    huatuo = [sys.executable, "-m", "huatuo_cli"]
    subprocess.run([*huatuo, "convert", "synth", str(work / "checkpoint"), "--arch", "llava-qwen2",
                    "--vision-layout", "folder"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*huatuo, "convert", "all", str(work / "checkpoint"), str(work / "huatuo-demo-q4_k_m"),
                    "--quant", "q4_k_m"], check=True, stdout=subprocess.DEVNULL)
    return work / "huatuo-demo-q4_k_m"


def sbom(stage: Path, out: Path) -> None:
    """Install the build Python's lock into a throwaway venv from the wheelhouse alone, and describe that
    venv (each other Python's packages and versions are its lock's lines)."""
    with tempfile.TemporaryDirectory(prefix="huatuo-sbom-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--find-links",
                        str(stage / "wheelhouse"), "--require-hashes", "-r", str(stage / _lock_name(_this_python()))],
                       check=True)
        subprocess.run([sys.executable, "-m", "cyclonedx_py", "environment", "--output-reproducible",
                        "--of", "JSON", "-o", str(out), str(venv / "bin" / "python")], check=True)


def write_manifest(stage: Path) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != "MANIFEST.sha256")
    lines = [f"{sha256_file(p)}  {p.relative_to(stage).as_posix()}" for p in files]
    (stage / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")


def build(out_dir: Path, bundles: list[Path], cuda_archs: str | None = None) -> Path:
    name = f"huatuo-offline-{_version()}-linux-{platform.machine()}" + ("-cuda" if cuda_archs else "")
    final = out_dir / name
    stage = out_dir / f".{name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        for tag, wheels in wheelhouse(stage / "wheelhouse", cuda_archs).items():
            write_lock(wheels, stage / _lock_name(tag), _extra(cuda_archs))
        with tempfile.TemporaryDirectory(prefix="huatuo-demo-") as tmp:
            for bundle in bundles or [demo_bundle(Path(tmp))]:
                if not (bundle / "manifest.json").is_file():
                    sys.exit(f"build_offline: {bundle} is not a model bundle (no manifest.json)")
                shutil.copytree(bundle, stage / "bundles" / bundle.name)
        sbom(stage, stage / "sbom.cdx.json")
        shutil.copy2(HERE / "install.sh", stage / "install.sh")
        shutil.copy2(HERE / "README.md", stage / "README.md")
        (stage / "VERSION").write_text(_version() + "\n")
        write_manifest(stage)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    with tarfile.open(out_dir / f"{name}.tar.gz", "w:gz") as tar:
        tar.add(final, arcname=name)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (e.g. dist)")
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="model bundle to ship (repeatable)")
    parser.add_argument("--cuda", metavar="ARCHS", help="GPU workstations: llama.cpp with CUDA for these GPU "
                        "architectures (e.g. '80;89;90'; build on a server with nvcc) and onnxruntime-gpu")
    args = parser.parse_args()
    final = build(args.out, args.bundle, args.cuda)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    print(f"{final} ({size / 2**20:.0f} MiB; {final}.tar.gz)")


if __name__ == "__main__":
    main()
