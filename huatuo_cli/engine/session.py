"""A loaded model bundle answering questions about images, with conversation history.

This is the one place where the image encoder, the prompt format and the language model meet:
`ask`, `batch` and the TUI all go through `Conversation`, so they send exactly the prompt the
fidelity checks measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from huatuo_cli.bundles.bundle import Bundle, Manifest, load_bundle
from huatuo_cli.engine.llm import POSITION_SCHEMES, Generation, ImageSegment, LlamaEngine, Sampling, Segment
from huatuo_cli.engine.preprocess import PREPROCESSING, QWEN_PREPROCESS
from huatuo_cli.engine.prompt import Turn, prompt_format
from huatuo_cli.errors import HuatuoError

if TYPE_CHECKING:
    from huatuo_cli.engine.encoder import ImageEncoder, QwenImageEncoder
    from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder


def interleave(token_chunks: Sequence[list[int]], image_embeds: Sequence[ImageSegment]) -> list[Segment]:
    """Text chunk, image, text chunk, ...: the prompt as llama.cpp is fed (N images, N+1 chunks)."""
    if len(token_chunks) != len(image_embeds) + 1:
        raise ValueError(f"{len(token_chunks) - 1} image markers for {len(image_embeds)} images")
    out: list[Segment] = [token_chunks[0]]
    for ids, image in zip(token_chunks[1:], image_embeds, strict=True):
        out += [image, ids]
    return out


#: pins the vision graph (fp32, fp16 or int8) instead of the measured rule: for an IT policy that
#: wants the exact fp32 path everywhere, and for tests that compare answers with the fp32 reference
ENV_VISION_PRECISION = "HUATUO_VISION_PRECISION"
PRECISIONS = ("fp32", "fp16", "int8")


def pinned_precision(bundle: Bundle) -> str | None:
    """The precision HUATUO_VISION_PRECISION pins (None: unset or "auto"), checked against the bundle."""
    pinned = os.environ.get(ENV_VISION_PRECISION, "auto").strip().lower() or "auto"
    if pinned == "auto":
        return None
    if pinned not in PRECISIONS:
        raise HuatuoError(f"{ENV_VISION_PRECISION}={pinned} is not a vision precision",
                          hint=f"one of auto, {', '.join(PRECISIONS)}")
    if not bundle.has(f"vision-{pinned}"):
        raise HuatuoError(f"{ENV_VISION_PRECISION}={pinned}, but bundle {bundle.root.name} has no {pinned} vision file",
                          hint="unset it to let huatuo choose, or convert the bundle again")
    return pinned


class BundleImageEncoder:
    """The bundle's image encoder: ONNX Runtime (exact; default) or the mmproj through llama.cpp mtmd.

    The mmproj path exists for comparison with llama.cpp tools; its upstream graph is inexact
    (README "Vision"), which the bundle's fidelity figures show.
    """

    def __init__(self, bundle: Bundle, *, vision: str = "onnx", device: str = "auto", threads: int | None = None) -> None:
        from huatuo_cli.engine.preprocess import PreprocessConfig

        self.vision = vision
        self._onnx: ImageEncoder | None = None
        self._mtmd: MtmdImageEncoder | None = None
        self._qwen: QwenImageEncoder | None = None
        if bundle.manifest.vision.get("preprocess") == QWEN_PREPROCESS:
            self._open_qwen(bundle, vision, device, threads)
        elif vision == "onnx":
            from huatuo_cli.engine.encoder import ImageEncoder, runs_on_cpu, vision_precision

            # only files the manifest lists (and verification hashed) are read: never a file that
            # merely sits in the folder
            pinned = pinned_precision(bundle)
            openvino = False
            if pinned is not None:  # the file as given, on ONNX Runtime's own providers
                role = "vision-" + pinned
            elif runs_on_cpu(device):
                from huatuo_cli.engine.vision_choice import cpu_vision_way

                way = cpu_vision_way(bundle, threads=threads)
                role, openvino = way.role, way.runtime == "openvino"
            else:
                role = "vision-" + vision_precision(device, has_fp16=bundle.has("vision-fp16"))
            self._onnx = ImageEncoder(bundle.path(role), device=device, cache_dir=bundle.root, threads=threads,
                                      preprocess_config=PreprocessConfig.from_file(bundle.path("preprocessor")),
                                      openvino=openvino)
            self.provider, self.fallback_note = self._onnx.provider, self._onnx.fallback_note
        elif vision == "mmproj":
            from huatuo_cli.engine.mtmd_encoder import MtmdImageEncoder

            self._config = PreprocessConfig.from_file(bundle.path("preprocessor"))
            self._mtmd = MtmdImageEncoder(bundle.path("mmproj"), threads=threads or 2, use_gpu=device != "cpu")
            self.provider, self.fallback_note = "llama.cpp-mtmd", "mmproj path: inexact upstream vision graph"
        else:
            raise HuatuoError(f"unknown vision path '{vision}'", hint="use onnx (default) or mmproj")

    def _open_qwen(self, bundle: Bundle, vision: str, device: str, threads: int | None) -> None:
        """Qwen2.5-VL's graph: fp16 on CUDA where the bundle has it, else fp32 (or the pinned file)."""
        from huatuo_cli.engine.encoder import QwenImageEncoder, vision_precision
        from huatuo_cli.engine.qwen_vision import QwenVisionConfig

        if vision != "onnx":
            raise HuatuoError(f"bundle {bundle.root.name} answers with its ONNX vision graph only: its mmproj is for "
                              "llama.cpp tools (mtmd resizes small images otherwise; docs/model.md)",
                              hint="use --vision onnx (the default)")
        pinned = pinned_precision(bundle)
        role = "vision-" + (pinned or vision_precision(device, has_fp16=bundle.has("vision-fp16")))
        config = QwenVisionConfig.from_file(bundle.path("preprocessor"),
                                            window_size=int(bundle.manifest.vision.get("window_size", 112)))
        self._qwen = QwenImageEncoder(bundle.path(role), config, device=device, threads=threads)
        self.provider, self.fallback_note = self._qwen.provider, self._qwen.fallback_note

    def encode(self, images: list[Image.Image]) -> Sequence[ImageSegment]:
        if self._qwen is not None:
            return self._qwen.encode(images)
        if self._onnx is not None:
            return list(self._onnx.encode(images))
        assert self._mtmd is not None
        return list(self._mtmd.encode(images, self._config))

    def close(self) -> None:
        if self._mtmd is not None:
            self._mtmd.close()


def check_runtime_fit(manifest: Manifest) -> None:
    """Refuse a bundle whose family needs a position scheme or preprocessing this runtime lacks
    (a bundle converted by a newer huatuo); bundles from before these keys mean the LLaVA-1.5 ones."""
    positions = manifest.llm.get("positions", POSITION_SCHEMES[0])
    preprocess = manifest.vision.get("preprocess", PREPROCESSING[0])
    for what, value, known in (("position scheme", positions, POSITION_SCHEMES),
                               ("image preprocessing", preprocess, PREPROCESSING)):
        if value not in known:
            raise HuatuoError(f"bundle {what} '{value}' is not supported by this huatuo ({', '.join(known)})",
                              hint="upgrade huatuo-cli or re-convert the bundle")


@dataclass
class ModelInfo:
    """What a result records about the model and where it ran."""

    model_sha256: str  # sha256 of the bundle's manifest.json: which verified model answered
    bundle: str  # the bundle's folder name
    architecture: str
    quantization: str
    vision_path: str
    vision_provider: str
    vision_note: str | None
    llm_gpu_offload: bool
    llm_cpu: str  # the llama.cpp CPU kernels in use, e.g. 'zen4, repack on'


class VisionLanguageModel:
    """A verified bundle, loaded once (per batch, per TUI session)."""

    def __init__(
        self,
        bundle: Bundle | Path | str,
        *,
        device: str = "auto",
        vision: str = "onnx",
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        #: what the bundle's family needs of the runtime, read from its manifest (never assumed)
        self.prompt = prompt_format(manifest.prompt_format)
        check_runtime_fit(manifest)
        self.encoder = BundleImageEncoder(self.bundle, vision=vision, device=device, threads=n_threads)
        self.llm = LlamaEngine(self.bundle.path("llm"), n_ctx=n_ctx, n_threads=n_threads,
                               n_gpu_layers=0 if device == "cpu" else None,  # --device cpu: no layer on a GPU
                               stop_strings=self.prompt.stop_strings,
                               positions=manifest.llm.get("positions", POSITION_SCHEMES[0]))
        self.info = ModelInfo(
            model_sha256=self.bundle.manifest_sha256,
            bundle=self.bundle.root.name,
            architecture=manifest.architecture,
            quantization=manifest.quantization,
            vision_path=vision,
            vision_provider=self.encoder.provider,
            vision_note=self.encoder.fallback_note,
            llm_gpu_offload=self.llm.gpu_offload,
            llm_cpu=self.llm.cpu_kernels,
        )

    def encode_images(self, images: Sequence[Image.Image]) -> list[ImageSegment]:
        """One [tokens, n_embd] array (with its grid where the position scheme needs it) per PIL image."""
        if not images:
            return []
        if len(images) > self.prompt.max_images:
            raise HuatuoError(f"{len(images)} images given; this model takes at most {self.prompt.max_images}")
        return list(self.encoder.encode(list(images)))

    def segments(self, turns: list[Turn], image_embeds: Sequence[ImageSegment]) -> list[Segment]:
        """Token chunks and image embeddings in prompt order."""
        return interleave(self.llm.tokenize(self.prompt.render(turns)), image_embeds)

    def close(self) -> None:
        self.llm.close()
        self.encoder.close()


@dataclass
class Conversation:
    """Images given once, then questions and answers; follow-ups see the whole history."""

    model: VisionLanguageModel
    images: list[Image.Image] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    #: computed on the first question; pass them in to ask several independent questions of one study
    image_embeds: list[ImageSegment] | None = None

    def ask(self, question: str, sampling: Sampling = Sampling(),
            on_text: Callable[[str], None] | None = None) -> Generation:
        encode_s = 0.0
        if self.image_embeds is None:
            t0 = time.perf_counter()
            self.image_embeds = self.model.encode_images(self.images)
            encode_s = time.perf_counter() - t0
        images_now = len(self.images) if not self.turns else 0
        pending = self.turns + [Turn(question=question, images=images_now)]
        result = self.model.llm.generate(self.model.segments(pending, self.image_embeds), sampling, on_text)
        self.turns = pending[:-1] + [Turn(question=question, images=images_now, answer=result.text)]
        result.encode_s = encode_s
        return result
