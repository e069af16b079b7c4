"""Which vision file on which CPU runtime encodes images on this machine: measured here, never assumed.

On the CPU the exact way is the fp32 file on ONNX Runtime's CPU provider. The others:

- the int8 file (dynamic quantization: VNNI/AMX-INT8 kernels) on the CPU provider, gated at
  conversion against PyTorch like the fp16 file (its figures are in the manifest);
- OpenVINO's execution provider on the fp32 and the int8 file, where the installed onnxruntime is
  the `onnxruntime-openvino` build (the `openvino` extra). OpenVINO picks its own inference
  precision per CPU (bf16 where the CPU has it), so no conversion can vouch for its numbers: they
  are gated here, on the conversion's validation images, against the exact way's embeddings, to
  the bound the manifest records for the fp16 file. A way that misses it is never used.

Each way is timed as one image question waits for it: opening its session (the second open, so
OpenVINO's compiled-model cache is warm, as it is for every question after the first) plus one
encode (best of 3 after the validation images warmed it up). The fastest faithful way is used
when it beats the exact one by GAIN; else the exact one. The figures are kept in the speed probe's
cache (`quant_probe.ProbeCache`: this machine and build), keyed by the bundle's files and the
onnxruntime build, so a machine measures once; `huatuo doctor` shows them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from huatuo_cli.bundles.bundle import Bundle
from huatuo_cli.engine.preprocess import PreprocessConfig
from huatuo_cli.engine.providers import CPU, OPENVINO
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

#: a way other than the exact one must be this much faster to be used (its embeddings differ a little: it must pay)
GAIN = 0.10
PRECISIONS = ("fp32", "int8")
RUNTIMES = {"cpu": CPU, "openvino": OPENVINO}


@dataclass(frozen=True)
class VisionWay:
    """A bundle vision file (`precision`) on a runtime: "cpu" (ONNX Runtime's CPU provider) or "openvino"."""

    precision: str = "fp32"
    runtime: str = "cpu"

    @property
    def role(self) -> str:
        return f"vision-{self.precision}"

    @property
    def name(self) -> str:
        return f"{self.runtime}/{self.precision}"

    @property
    def gated_here(self) -> bool:
        """Whether its numbers are checked on this machine (conversion checked the CPU provider's)."""
        return self.runtime != "cpu"

    @classmethod
    def parse(cls, name: str) -> VisionWay:
        runtime, _, precision = name.partition("/")
        return cls(precision, runtime)


EXACT = VisionWay()


def candidates(bundle: Bundle, available: list[str]) -> list[VisionWay]:
    """The ways this bundle and this onnxruntime offer, the exact one first (none for Qwen2.5-VL's
    graph, whose encoder takes any image size: it keeps its fp32 file on the CPU provider)."""
    from huatuo_cli.engine.preprocess import QWEN_PREPROCESS

    if bundle.manifest.vision.get("preprocess") == QWEN_PREPROCESS:
        return []
    precisions = [p for p in PRECISIONS if bundle.has(f"vision-{p}")]
    return [VisionWay(p, r) for r, provider in RUNTIMES.items() if provider in available for p in precisions]


def cosine_bound(bundle: Bundle) -> float | None:
    """The fp16 file's cosine bound against PyTorch as the manifest records it (the int8 file's where
    the bundle has no fp16 file); None: nothing to hold another runtime to, so none is used."""
    files = bundle.manifest.fidelity.get("vision", {}).get("files", {})
    for name in ("vision-fp16.onnx", "vision-int8.onnx"):
        bound = files.get(name, {}).get("tolerance", {}).get("min_cosine")
        if bound is not None:
            return float(bound)
    return None


def figures_key(bundle: Bundle) -> str:
    """The bundle's vision files and the onnxruntime build (its version and providers) they were measured on."""
    ort = require("onnxruntime")
    files = [f"{p}={f.sha256[:16]}" for p in PRECISIONS if (f := bundle.manifest.file(f"vision-{p}")) is not None]
    return f"{','.join(files)}|onnxruntime {ort.__version__} {'+'.join(sorted(ort.get_available_providers()))}"


def validation_pixels(config: PreprocessConfig) -> np.ndarray:
    """The conversion's validation images, through the bundle's own preprocessing."""
    from huatuo_cli.engine.preprocess import preprocess
    from huatuo_cli.engine.validation_images import validation_images

    return preprocess([image for _, image in validation_images(config.crop_height)], config)


def measure_way(bundle: Bundle, way: VisionWay, config: PreprocessConfig, pixels: np.ndarray,
                threads: int | None) -> tuple[dict[str, float], np.ndarray]:
    """({"open", "encode", "seconds"}, the validation images' embeddings) of one way, through the
    same `ImageEncoder` that answers; a way whose provider does not load is a HuatuoError."""
    from huatuo_cli.engine.encoder import ImageEncoder

    def open_encoder() -> ImageEncoder:
        return ImageEncoder(bundle.path(way.role), device="cpu", cache_dir=bundle.root, threads=threads,
                            preprocess_config=config, openvino=way.runtime == "openvino")

    open_encoder()  # OpenVINO compiles the graph and caches it: what the first question on a machine pays, once
    start = time.perf_counter()
    encoder = open_encoder()
    opened = time.perf_counter() - start
    if encoder.provider != RUNTIMES[way.runtime]:
        raise HuatuoError(f"{way.name}: {encoder.fallback_note or encoder.provider}")
    embeddings = encoder.encode_pixels(pixels)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        encoder.encode_pixels(pixels[:1])
        best = min(best, time.perf_counter() - start)
    return {"open": opened, "encode": best, "seconds": opened + best}, embeddings


def measure(bundle: Bundle, ways: list[VisionWay], threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Figures per way name: open/encode/seconds, "cosine" (the least over the validation images) for
    a way gated here, or "error"."""
    from huatuo_cli.engine.validation_images import image_cosines

    config = PreprocessConfig.from_file(bundle.path("preprocessor"))
    pixels = validation_pixels(config)
    figures: dict[str, dict[str, Any]] = {}
    reference = None
    for way in [EXACT] + [w for w in ways if w != EXACT]:
        try:
            timing, embeddings = measure_way(bundle, way, config, pixels, threads)
        except HuatuoError as exc:
            figures[way.name] = {"error": str(exc)}
            continue
        if way == EXACT:
            reference = embeddings
        elif way.gated_here:
            timing["cosine"] = min(image_cosines(reference, embeddings)) if reference is not None else -1.0
        figures[way.name] = timing
    return figures


def faithful(way: VisionWay, figures: dict[str, Any], bound: float | None) -> bool:
    """Measured, and (for a way gated here) every validation image within the bound."""
    if "seconds" not in figures:
        return False
    return not way.gated_here or (bound is not None and figures.get("cosine", -1.0) >= bound)


def choose(figures: dict[str, dict[str, Any]], bound: float | None) -> VisionWay:
    """The fastest faithful way that beats the exact one by GAIN; the exact one otherwise."""
    exact = figures.get(EXACT.name, {}).get("seconds")
    if exact is None:
        return EXACT
    best, best_seconds = EXACT, exact * (1 - GAIN)
    for name, measured in figures.items():
        way = VisionWay.parse(name)
        if way != EXACT and faithful(way, measured, bound) and measured["seconds"] <= best_seconds:
            best, best_seconds = way, measured["seconds"]
    return best


def cpu_figures(bundle: Bundle, *, threads: int | None = None, run: bool = True) -> dict[str, dict[str, Any]] | None:
    """This machine's figures for the bundle's ways (measured now when none are cached and `run`);
    None: nothing to choose between, or not measured."""
    from huatuo_cli.engine.quant_probe import ProbeCache, backend_key

    ways = candidates(bundle, require("onnxruntime").get_available_providers())
    if ways in ([], [EXACT]):
        return None
    cache = ProbeCache(backend_key())
    key = figures_key(bundle)
    figures = cache.vision.get(key)
    if figures is None and run:
        figures = measure(bundle, ways, threads)
        cache.put_vision(key, figures)
    return figures


def cpu_vision_way(bundle: Bundle, *, threads: int | None = None) -> VisionWay:
    """The way this bundle's images are encoded on this machine's CPU (measured once, then cached)."""
    figures = cpu_figures(bundle, threads=threads)
    return choose(figures, cosine_bound(bundle)) if figures else EXACT


def figures_line(figures: dict[str, dict[str, Any]], bound: float | None) -> str:
    """One line per doctor: each way's seconds for one image, its cosine where gated here, or why not."""
    parts = []
    for name, measured in figures.items():
        way = VisionWay.parse(name)
        if "seconds" not in measured:
            parts.append(f"{name} failed: {measured.get('error', '?')}")
            continue
        text = f"{name} {measured['seconds']:.2f} s"
        if way.gated_here:
            verdict = "ok" if faithful(way, measured, bound) else "fails"
            text += f" (cosine {measured.get('cosine', float('nan')):.5f} vs bound {bound}: {verdict})"
        parts.append(text)
    return "; ".join(parts)
