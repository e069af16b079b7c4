"""Which ONNX Runtime execution providers to ask for, with which options, and what actually loaded.

`plan_providers` is a pure function of what the installed onnxruntime offers and what the user
asked for, so every combination is unit-tested without a GPU. Order: TensorRT, CUDA, CPU.
TensorRT gets fp16, an engine cache and a timing cache in a per-machine folder inside the bundle
(an engine is only valid for the GPU and TensorRT version that built it; building one takes
minutes) and fixed profile shapes for batches of 1..6 images (an input outside the profile would
rebuild the engine). ONNX Runtime falls back silently when a provider's libraries are missing, so
`fallback_note` compares the plan with `session.get_providers()` and says so.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli import APP_NAME
from huatuo_cli.engine.prompt import MAX_IMAGES  # the TensorRT profile covers exactly 1..MAX_IMAGES
from huatuo_cli.errors import HuatuoError

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Intel's runtime inside ONNX Runtime (the `onnxruntime-openvino` build, the `openvino` extra); on the
#: CPU only where this machine measured it faster and its numbers passed the gate (`vision_choice`)
OPENVINO = "OpenVINOExecutionProvider"
DEVICES = ("auto", "tensorrt", "cuda", "cpu")
INPUT_NAME = "pixel_values"
TRT_CACHE_DIR = "trt-cache"


@dataclass(frozen=True)
class ProviderPlan:
    """Providers in priority order with their options, as `InferenceSession(providers=...)` takes them."""

    providers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]

    @property
    def preferred(self) -> str:
        return self.providers[0][0]

    def options(self, name: str) -> dict[str, Any]:
        return dict(self.providers)[name]


def machine_id() -> str:
    """A short stable id of this machine for the TensorRT cache folder (no user data in it)."""
    raw = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            raw = Path(path).read_text().strip()
            break
        except OSError:
            continue
    raw = raw or platform.node()
    return hashlib.sha256(f"{raw}|{platform.machine()}".encode()).hexdigest()[:16]


def trt_cache_dir(bundle_dir: Path | str, machine: str | None = None) -> Path:
    """`BUNDLE/trt-cache/<machine>/`; a read-only bundle (installed machine-wide) caches per user instead.

    Engines are specific to GPU, driver and TensorRT version, so they never travel with the bundle;
    the user-cache fallback is keyed by the bundle's folder name so two bundles never share engines.
    """
    bundle_dir = Path(bundle_dir)
    machine = machine or machine_id()
    if os.access(bundle_dir, os.W_OK):
        return bundle_dir / TRT_CACHE_DIR / machine
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME)) / TRT_CACHE_DIR / bundle_dir.name / machine


def tensorrt_options(cache: Path, image_size: int, max_images: int = MAX_IMAGES) -> dict[str, Any]:
    shape = f"x3x{image_size}x{image_size}"
    return {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": f"{INPUT_NAME}:1{shape}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:1{shape}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{max_images}{shape}",
    }


def cuda_options(device_id: int = 0) -> dict[str, Any]:
    return {
        "device_id": device_id,
        # Exhaustive search picks the fastest convolution once per shape; the patch conv is the only one.
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": True,
    }


def openvino_options(threads: int | None = None) -> dict[str, Any]:
    """OpenVINO on the CPU, its compiled models cached per user (a bundle folder may be read-only):
    the first session compiles the graph, later ones load it."""
    import platformdirs

    options = {"device_type": "CPU", "cache_dir": str(Path(platformdirs.user_cache_dir(APP_NAME)) / "openvino")}
    if threads:
        options["num_of_threads"] = str(threads)
    return options


def plan_providers(
    available: Sequence[str],
    bundle_dir: Path | str,
    image_size: int,
    device: str = "auto",
    *,
    device_id: int = 0,
    machine: str | None = None,
    max_images: int = MAX_IMAGES,
    openvino: bool = False,
    threads: int | None = None,
) -> ProviderPlan:
    """The providers to request, best first, CPU always last as the safety net.

    `device`: auto = the best available; tensorrt / cuda = that one (with what is below it as
    fallback), an error if this onnxruntime build lacks it; cpu = CPU only. `openvino`: where the
    plan has no GPU provider and this onnxruntime has OpenVINO's, it goes before the CPU provider
    (`vision_choice` decides; `threads` are its threads).
    """
    if device not in DEVICES:
        raise HuatuoError(f"unknown device '{device}'", hint=f"one of {', '.join(DEVICES)}")
    available = list(available)
    wanted = {"auto": [TENSORRT, CUDA], "tensorrt": [TENSORRT, CUDA], "cuda": [CUDA], "cpu": []}[device]
    if device in ("tensorrt", "cuda"):
        needed = TENSORRT if device == "tensorrt" else CUDA
        if needed not in available:
            raise HuatuoError(
                f"--device {device} was asked for, but this onnxruntime has no {needed} "
                f"(available: {', '.join(available) or 'none'})",
                hint="install 'huatuo-cli[gpu]' (onnxruntime-gpu) instead of the CPU build, or use --device auto",
            )
    providers: list[tuple[str, dict[str, Any]]] = []
    for name in wanted:
        if name not in available:
            continue
        if name == TENSORRT:
            providers.append((TENSORRT, tensorrt_options(trt_cache_dir(bundle_dir, machine), image_size, max_images)))
        else:
            providers.append((CUDA, cuda_options(device_id)))
    if openvino and not providers and OPENVINO in available:
        providers.append((OPENVINO, openvino_options(threads)))
    providers.append((CPU, {}))
    return ProviderPlan(providers)


def fallback_note(plan: ProviderPlan, loaded: Sequence[str]) -> str | None:
    """A warning when the session did not get the provider the plan preferred (silent fallback)."""
    actual = loaded[0] if loaded else "none"
    if actual == plan.preferred:
        return None
    why = ("OpenVINO could not compile the graph" if plan.preferred == OPENVINO
           else "missing CUDA/TensorRT libraries or an incompatible GPU")
    return f"{plan.preferred} was requested but did not load; running on {actual} ({why})"
