"""The air-gapped artifact: built here, installed with no network, refused when one byte differs.

The artifact is the real one (`packaging/build_offline.py`, demo bundle included); installs run
`install.sh` inside a network namespace with no interfaces (`unshare -n`, root), pip's index off,
HOME in a temp folder; the installed `huatuo` then answers the demo question there, natively and
under `qemu-x86_64 -cpu Haswell`, and with every other supported CPython (pyenv's 3.10, 3.12, 3.13),
each from its own lock, with the same tokens.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from demo.samples import sample_file

pytestmark = pytest.mark.slow  # every test here needs the built artifact (about a minute)

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Is there a pleural effusion?"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")  # packaging/build_offline.py PYTHONS
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def pyenv_python(version: str) -> Path:
    """pyenv's CPython X.Y (`pyenv root`/versions/X.Y.*): the workstations' other Pythons. Missing is a
    failure, not a skip: the promise is that the artifact installs with each of them."""
    roots = [os.environ.get("PYENV_ROOT", ""), "/root/.pyenv", str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip())
    for root in filter(None, roots):
        found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
        if found:
            return Path(found[-1])
    pytest.fail(f"no CPython {version} from pyenv (looked in {roots}): install it (`pyenv install {version}`) "
                "so that the artifact is tested with every Python it supports")


@pytest.fixture(scope="session")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(ROOT / "packaging" / "build_offline.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (folder,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("huatuo-offline-")]
    assert (out / f"{folder.name}.tar.gz").is_file()
    return folder


def offline_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "XDG_", "HUATUO_", "VIRTUAL_ENV"))}
    # the exact fp32 vision graph everywhere: answers are compared across installs and CPU kernels
    return dict(env, HOME=str(home), PIP_INDEX_URL="http://127.0.0.1:9/nowhere", PATH=os.environ["PATH"],
                HUATUO_VISION_PRECISION="fp32")


def install(folder: Path, prefix: Path, models: Path, home: Path, *extra: str,
            python: Path | None = None) -> subprocess.CompletedProcess:
    python = python or Path(sys.base_prefix) / "bin" / f"python{THIS_PYTHON}"
    cmd = ["unshare", "-n", str(folder / "install.sh"), "--prefix", str(prefix), "--models", str(models),
           "--python", str(python), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=offline_env(home), timeout=900)


def test_artifact_holds_a_locked_runtime_without_server_packages(artifact):
    wheels = sorted(p.name for p in (artifact / "wheelhouse").glob("*.whl"))
    assert any(w.startswith("llama_cpp_python-0.3.36") for w in wheels)
    locks = {version: (artifact / f"requirements-cp{version.replace('.', '')}.lock").read_text() for version in PYTHONS}
    assert sorted(p.name for p in artifact.glob("requirements*.lock")) == sorted(
        f"requirements-cp{v.replace('.', '')}.lock" for v in PYTHONS)
    hashes = {subprocess.run(["sha256sum", str(artifact / "wheelhouse" / w)], capture_output=True, text=True,
                             check=True).stdout.split()[0]: w for w in wheels}
    locked: set[str] = set()
    for version, lock in locks.items():
        lines = [line for line in lock.splitlines() if line and not line.startswith("#")]
        digests = [line.split("--hash=sha256:")[1] for line in lines]
        assert len(digests) == len(lines) == len({line.split("=")[0] for line in lines}), version  # one per package
        for digest in digests:  # every locked wheel is in the wheelhouse, and is built for this Python
            wheel = hashes[digest]
            python_tag, abi_tag = wheel[:-4].split("-")[-3:-1]
            tag = "cp" + version.replace(".", "")
            assert (python_tag, abi_tag) == (tag, tag) or abi_tag in ("abi3", "none"), (version, wheel)
        assert any(line.startswith("huatuo-cli[cpu,sign]==") for line in lines), version
        locked |= set(digests)
    assert locked == set(hashes)  # every wheel is locked by hash, by at least one Python's lock
    assert "tomli" in locks["3.10"] and "\ntomli==" not in locks["3.11"]
    for server in ("torch", "transformers", "optimum", "peft", "onnx-", "safetensors"):
        assert not any(w.lower().startswith(server) for w in wheels), server
    sbom = json.loads((artifact / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"].lower().replace("_", "-") for c in sbom["components"]}
    assert {"huatuo-cli", "llama-cpp-python", "onnxruntime", "pydicom"} <= names, names
    listed = {line.split("  ", 1)[1] for line in (artifact / "MANIFEST.sha256").read_text().splitlines()}
    files = {p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file()}
    assert listed == files - {"MANIFEST.sha256"}
    assert list((artifact / "bundles").glob("*/manifest.json"))


def test_every_wheel_loads_on_glibc_2_28(artifact):
    """Issue 26: RHEL/Rocky/Alma 8 and Ubuntu 20.04 workstations. `auditwheel show` over the shipped
    wheelhouse itself (the build refuses a newer wheel; this reads what actually shipped)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llama_wheel", ROOT / "packaging" / "llama_wheel.py")
    llama_wheel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(llama_wheel)
    wheels = sorted((artifact / "wheelhouse").glob("*.whl"))
    verdicts = {w.name: llama_wheel.loads_on_glibc(w, "2.28") for w in wheels}
    assert not {name: why for name, why in verdicts.items() if why}
    assert any(n.startswith("llama_cpp_python-") and n.endswith("manylinux_2_28_x86_64.whl") for n in verdicts)
    assert any(n.startswith("cryptography-") and "manylinux_2_28" in n for n in verdicts), sorted(verdicts)


def test_install_with_no_network_then_ask_natively_and_on_an_older_cpu(artifact, tmp_path):
    prefix, models, home = tmp_path / "prefix", tmp_path / "models", tmp_path / "home"
    done = install(artifact, prefix, models, home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "verified" in done.stdout
    (bundle,) = models.iterdir()
    huatuo = prefix / "bin" / "huatuo"
    python = huatuo.resolve().parent / "python"
    scan = str(sample_file())  # demo/ is not installed: any readable scan works
    env = offline_env(home)

    def ask(*prefix_cmd: str, **extra_env: str) -> dict:
        cmd = ["unshare", "-n", *prefix_cmd, "--json", "--model", str(bundle), "--max-tokens", "16", scan, QUESTION]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, **extra_env), timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout)

    native = ask(str(huatuo), "ask")
    assert native["tokens"] > 0 and native["answer"]
    emulated = ask("qemu-x86_64", "-cpu", "Haswell", str(python), "-m", "huatuo_cli", "ask")
    assert emulated["provider"]["llm_cpu"].startswith("haswell,")
    same_kernels = ask(str(huatuo), "ask", HUATUO_CPU_VARIANT="haswell")
    assert emulated["answer"] == same_kernels["answer"] and emulated["tokens"] == same_kernels["tokens"]

    # a minimal workstation (issue 26): without GCC's OpenMP runtime and OpenSSL the installed engine answers the same
    from tests.test_native_libraries import UNNEEDED, _system_library, hidden

    bare = hidden(tmp_path / "bare", [_system_library(name) for name in UNNEEDED],
                  ["unshare", "-n", str(huatuo), "ask", "--json", "--model", str(bundle), "--max-tokens", "16", scan,
                   QUESTION], env)
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert json.loads(bare.stdout)["answer"] == native["answer"]

    # the installed program serves too: the server's packages are in the artifact
    server = subprocess.Popen([str(huatuo), "serve", "--model", str(bundle), "--port", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = ""
        while "listening on" not in line:
            line = server.stderr.readline()
            assert line or server.poll() is None, "huatuo serve exited"
        base = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert base, line
        with urllib.request.urlopen(base.group(1) + "/health", timeout=60) as health:
            assert health.status == 200
    finally:
        server.terminate()
        server.wait(60)

    # uninstall removes the program, keeps the bundles
    gone = subprocess.run([str(artifact / "install.sh"), "--uninstall", "--prefix", str(prefix)],
                          capture_output=True, text=True, env=env)
    assert gone.returncode == 0, gone.stderr
    assert not huatuo.exists() and not any(prefix.glob("0.*")) and (bundle / "manifest.json").is_file()


@pytest.fixture
def artifact_copy(artifact, tmp_path) -> Path:
    copy = tmp_path / artifact.name
    shutil.copytree(artifact, copy, symlinks=True)
    return copy


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["wheelhouse/llama_cpp_python-*.whl", f"requirements-cp{THIS_PYTHON.replace('.', '')}.lock",
                                    "bundles/*/llm-q4_k_m.gguf", "bundles/*/manifest.json"])
def test_one_changed_byte_stops_the_install_before_it_changes_anything(artifact_copy, tmp_path, victim):
    (target,) = artifact_copy.glob(victim)
    _flip(target)
    done = install(artifact_copy, tmp_path / "prefix", tmp_path / "models", tmp_path / "home")
    assert done.returncode != 0
    assert target.relative_to(artifact_copy).as_posix() in done.stderr, done.stderr
    assert not (tmp_path / "prefix").exists() and not (tmp_path / "models").exists()


def test_a_file_not_in_the_manifest_is_refused(artifact_copy, tmp_path):
    (artifact_copy / "wheelhouse" / "extra-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + bytes(18))
    done = install(artifact_copy, tmp_path / "prefix", tmp_path / "models", tmp_path / "home")
    assert done.returncode != 0 and "wheelhouse/extra-1.0-py3-none-any.whl" in done.stderr, done.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_manifest_line_that_is_not_a_checksum_is_refused(artifact_copy, tmp_path):
    with (artifact_copy / "MANIFEST.sha256").open("a") as manifest:
        manifest.write("not a checksum line\n")
    done = install(artifact_copy, tmp_path / "prefix", tmp_path / "models", tmp_path / "home")
    assert done.returncode != 0 and "MANIFEST.sha256 does not check" in done.stderr, done.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_wheel_not_in_the_lock_is_refused_even_with_a_rewritten_manifest(artifact_copy, tmp_path):
    """Someone swaps a wheel for another build and regenerates MANIFEST.sha256: the lock still holds."""
    wheelhouse = artifact_copy / "wheelhouse"
    (click,) = wheelhouse.glob("click-*.whl")
    # a valid wheel of the same name and version with one changed module: not the locked build
    with zipfile.ZipFile(click) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(click, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, data in members:
            dst.writestr(info, data + b"\n# changed\n" if info.filename.endswith("__init__.py") else data)
    lines = []
    for line in (artifact_copy / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if name == f"wheelhouse/{click.name}":
            digest = subprocess.run(["sha256sum", str(click)], capture_output=True, text=True).stdout.split()[0]
        lines.append(f"{digest}  {name}")
    (artifact_copy / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    done = install(artifact_copy, tmp_path / "prefix", tmp_path / "models", tmp_path / "home")
    assert done.returncode != 0 and "pip refused the wheelhouse" in done.stderr, done.stderr
    assert "hash" in (done.stdout + done.stderr).lower()
    assert not any((tmp_path / "prefix").glob("0.*")) and not (tmp_path / "models").exists()


def test_a_new_version_and_a_changed_bundle_install_beside_the_old_ones(artifact, tmp_path):
    prefix, models, home = tmp_path / "prefix", tmp_path / "models", tmp_path / "home"
    assert install(artifact, prefix, models, home).returncode == 0
    # the next release, as build_offline.py would write it: another VERSION, a re-exported bundle
    newer = tmp_path / "newer"
    shutil.copytree(artifact, newer)
    (newer / "VERSION").write_text("0.1.1\n")
    (bundle,) = (newer / "bundles").iterdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = "re-exported"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    build_offline = _build_offline()
    build_offline.write_manifest(newer)
    done = install(newer, prefix, models, home)
    assert done.returncode == 0, done.stderr[-2000:]

    old_venv, new_venv = prefix / "0.1.0" / "venv", prefix / "0.1.1" / "venv"
    assert (prefix / "bin" / "huatuo").resolve() == (new_venv / "bin" / "huatuo").resolve()
    installed = sorted(p.name for p in models.iterdir())
    assert len(installed) == 2 and installed[0] == bundle.name and installed[1].startswith(bundle.name + "-")
    for name in installed:  # the old version and the old bundle stay usable
        check = subprocess.run([str(old_venv / "bin" / "huatuo"), "models", "verify", str(models / name)],
                               capture_output=True, text=True, env=offline_env(home))
        assert check.returncode == 0, check.stdout + check.stderr
    gone = subprocess.run([str(newer / "install.sh"), "--uninstall", "--prefix", str(prefix)], capture_output=True,
                          text=True, env=offline_env(home))
    assert gone.returncode == 0 and not (prefix / "bin" / "huatuo").exists() and (old_venv / "bin" / "huatuo").exists()


def _build_offline():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_offline", ROOT / "packaging" / "build_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pinned_it_key_admits_only_bundles_it_signed(artifact, tmp_path):
    """`install.sh --trust-key IT.pub`: the artifact's unsigned demo bundle is refused before anything
    is installed; signed with IT's key (`huatuo convert sign`), it installs, and the installed huatuo
    checks the signature offline (cryptography is in the workstation wheelhouse)."""
    keys = tmp_path / "keys"
    made = subprocess.run([sys.executable, "-m", "huatuo_cli", "convert", "keygen", str(keys)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    public = keys / "huatuo-signing.pub"

    unsigned = tmp_path / "unsigned"
    shutil.copytree(artifact, unsigned)
    refused = install(unsigned, tmp_path / "p1", tmp_path / "m1", tmp_path / "home", "--trust-key", str(public))
    assert refused.returncode != 0 and "is not signed by the trusted key; nothing installed" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not any((tmp_path / "p1").glob("0.*")) and not (tmp_path / "m1").exists()

    not_a_key = tmp_path / "not-a-key.pub"
    not_a_key.write_text("ssh-ed25519 AAAA root@host\n")
    bad = install(unsigned, tmp_path / "p3", tmp_path / "m3", tmp_path / "home", "--trust-key", str(not_a_key))
    assert bad.returncode != 0 and "is not a huatuo-ed25519 public key file" in bad.stderr
    assert not any((tmp_path / "p3").glob("0.*"))

    signed = tmp_path / "signed"
    shutil.copytree(artifact, signed)
    (bundle,) = (signed / "bundles").iterdir()
    sign = subprocess.run([sys.executable, "-m", "huatuo_cli", "convert", "sign", str(bundle), "--key",
                           str(keys / "huatuo-signing.key")], capture_output=True, text=True)
    assert sign.returncode == 0, sign.stderr
    _build_offline().write_manifest(signed)  # IT re-issues the artifact's MANIFEST.sha256 after signing
    prefix, models, home = tmp_path / "p2", tmp_path / "m2", tmp_path / "home"
    done = install(signed, prefix, models, home, "--trust-key", str(public))
    assert done.returncode == 0, done.stderr[-2000:]
    (venv,) = prefix.glob("0.*/venv")
    assert (venv / "etc" / "huatuo" / "trusted-keys").read_text() == public.read_text()
    check = subprocess.run([str(prefix / "bin" / "huatuo"), "models", "verify", str(models / bundle.name)],
                           capture_output=True, text=True, env=offline_env(home))
    assert check.returncode == 0 and "signed by trusted key" in check.stdout, check.stdout + check.stderr


def test_every_supported_cpython_installs_its_lock_offline_and_answers_the_same(artifact, tmp_path):
    """Ubuntu 22.04's 3.10, 24.04's 3.12, Debian 13's 3.13 and the build's 3.11: each installs the
    artifact offline from its own lock (the venv's packages are exactly that lock's) and answers the
    demo question with the same tokens (greedy decoding on the same bundle)."""
    scan = str(sample_file())
    answers = {}
    for version in PYTHONS:
        python = Path(sys.base_prefix) / "bin" / f"python{version}" if version == THIS_PYTHON else pyenv_python(version)
        prefix, models, home = tmp_path / version / "prefix", tmp_path / version / "models", tmp_path / version / "home"
        done = install(artifact, prefix, models, home, python=python)
        assert done.returncode == 0, version + ": " + done.stdout[-3000:] + done.stderr[-3000:]
        venv_python = prefix / "bin" / "huatuo"
        venv_python = venv_python.resolve().parent / "python"
        got = subprocess.run([str(venv_python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert got == version
        frozen = subprocess.run([str(venv_python), "-m", "pip", "list", "--format=freeze", "--exclude", "pip",
                                 "--exclude", "setuptools", "--disable-pip-version-check"],
                                capture_output=True, text=True, check=True, env=offline_env(home)).stdout
        lock = (artifact / f"requirements-cp{version.replace('.', '')}.lock").read_text()
        want = {line.split(" ")[0].split("[")[0].split("==")[0].lower() + "==" + line.split(" ")[0].split("==")[1]
                for line in lock.splitlines() if line and not line.startswith("#")}
        have = {line.split("==")[0].lower().replace("_", "-") + "==" + line.split("==")[1]
                for line in frozen.splitlines() if "==" in line}
        assert have == want, (version, have ^ want)
        (bundle,) = models.iterdir()
        res = subprocess.run(["unshare", "-n", str(prefix / "bin" / "huatuo"), "ask", "--json", "--model", str(bundle),
                              "--max-tokens", "16", scan, QUESTION],
                             capture_output=True, text=True, env=offline_env(home), timeout=900)
        assert res.returncode == 0, version + ": " + res.stderr[-3000:]
        reply = json.loads(res.stdout)
        assert reply["tokens"] > 0 and reply["answer"], version
        answers[version] = (reply["answer"], reply["tokens"])
    assert len(set(answers.values())) == 1, answers


@pytest.mark.parametrize("version", ["3.9", "pypy"])
def test_an_unsupported_python_is_refused_naming_the_supported_ones(artifact, tmp_path, version):
    if version == "pypy":  # any interpreter that is not CPython: a script that answers as PyPy would
        python = tmp_path / "pypy3"
        python.write_text("#!/bin/sh\necho pypy 3.11\n")
        python.chmod(0o755)
    else:  # Python 3.9: pydicom 3.0 needs 3.10
        python = pyenv_python(version)
    done = install(artifact, tmp_path / "prefix", tmp_path / "models", tmp_path / "home", python=python)
    assert done.returncode != 0
    assert "this artifact supports CPython 3.10 3.11 3.12 3.13" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "prefix").exists() and not (tmp_path / "models").exists()
