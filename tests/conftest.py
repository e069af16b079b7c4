"""Shared fixtures: synthetic HuatuoGPT-Vision checkpoints built once per session, isolated user dirs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from huatuo_convert.families import all_families
from huatuo_convert.synth import VISION_LAYOUTS, SynthSpec, write_synthetic_checkpoint

#: The checkpoints the suite uses: every LLaVA-layout model family, both vision-tower layouts (the
#: Qwen2.5-VL family's own layout has its own suite: tests/test_qwen_vl.py, and the conformance suite).
LAYOUTS = [(family.name, layout) for family in all_families() if family.vision.fixed_size for layout in VISION_LAYOUTS]


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """Factory: make_checkpoint(arch=..., vision_layout=..., **dims) -> folder, cached by spec."""
    cache: dict[SynthSpec, Path] = {}

    def make(**fields) -> Path:
        spec = replace(SynthSpec(), **fields)
        if spec not in cache:
            out = tmp_path_factory.mktemp("ckpt") / "model"
            cache[spec] = write_synthetic_checkpoint(out, spec)
        return cache[spec]

    return make


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path, monkeypatch):
    """No test reads or writes the real user's config, data or cache directories."""
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("HUATUO_MODEL", raising=False)
    # the exact fp32 vision graph, which the PyTorch reference is: whether the measured rule would
    # take int8 on this CI machine's CPU must not change answers compared with the reference
    # (tests/test_quant_choice.py tests that rule with the variable unset)
    monkeypatch.setenv("HUATUO_VISION_PRECISION", "fp32")


@pytest.fixture
def no_network(monkeypatch):
    """Every socket refused, and none of the offline variables libraries look at: whatever runs
    under this fixture must work on an air-gapped workstation as installed.

    Deliberately independent of (and stricter than) `huatuo_cli.offline.no_network`, which is part
    of what is tested: a test's oracle should not be the code under test.
    """
    import socket

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"test blocked network use: {what}")
        return blocked

    monkeypatch.setattr(socket, "socket", refuse("socket.socket"))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "socketpair"):
        monkeypatch.setattr(socket, name, refuse(f"socket.{name}"))
    return attempts


@pytest.fixture(scope="session")
def tiny_bundle(make_checkpoint, tmp_path_factory) -> Path:
    """A real bundle (`huatuo convert all`, F16 LLM) of the default tiny synthetic checkpoint."""
    from huatuo_convert.bundle_build import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny-f16"
    build_bundle(make_checkpoint(), out, "f16")
    return out


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount a real tmpfs with the given options (`"size=1m"`, `"ro,size=64k"`) under tmp_path: a
    full disk or a read-only folder as the kernel makes them. Mounting needs root (CI runs as root);
    where it is refused the test is skipped, saying so."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {res.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
