"""What a model family is: everything huatuo must know to convert, check, describe and synthesise
one kind of checkpoint, declared in one place (as llama.cpp declares one `ModelBase` subclass per
architecture and optimum one export config per model).

A family module (`huatuo_convert.families.<name>`) defines `FAMILY`; the registry finds it. The
converters ask the checkpoint's family (`LlavaCheckpoint.family`) instead of testing names, and
what the workstation needs at run time (prompt format, position scheme, preprocessing, image size,
tokens per image) is written into the bundle's manifest from here, so the runtime never assumes a
family. docs/architecture.md "How to add a model family" walks through a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from huatuo_cli.engine.prompt import PROMPT_FORMAT

if TYPE_CHECKING:
    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.gguf_arch import LlmArch
    from huatuo_convert.gguf_tokenizer import GgufVocab

#: One position per prompt token (text and image rows alike): LLaVA-1.5 on a plain decoder.
POSITIONS_LINEAR = "linear"
#: Qwen2-VL's multimodal rotary positions: (t, row, col) per image row, text continuing after the
#: image's largest (huatuo_cli.engine.llm)
POSITIONS_MROPE = "mrope"

#: Logit-parity gates, by output type, on max|delta logit| relative to the largest reference
#: |logit| (so one bound fits tiny random models and real ones). F32 must match to rounding;
#: F16/BF16 runs round activations (and BF16 weights) to 11/8 significant bits. Measured on the
#: synthetic checkpoints (|logits| up to ~16): F32 ~5e-7, F16 ~6e-4, BF16 ~4.5e-3; bounds carry
#: margin. Top-1 must agree at every *decisive* position: where the reference's top-1 margin
#: exceeds 2 x max|delta| (a smaller margin is a near-tie that a delta within tolerance can flip;
#: such positions are counted and reported, not hidden). Quantized outputs are reported (top-1,
#: KL), not gated: their loss is the price the user chose.
LLM_TOLERANCES: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "f32": {"max_rel_logit_delta": 1e-4, "top1_agreement_decisive": 1.0},
    "f16": {"max_rel_logit_delta": 5e-3, "top1_agreement_decisive": 1.0},
    "bf16": {"max_rel_logit_delta": 2e-2, "top1_agreement_decisive": 1.0},
})
#: Minimum cosine of the ONNX vision graph's image embeddings against the reference, per graph.
#: Measured on the synthetic towers and a random CLIP-L/336-shaped one (README "Vision"): fp32
#: cosine 0.9999999999, max abs 1.5e-5; fp16 0.99999996, max abs 5.4e-3. Real CLIP weights have
#: larger activations than random ones, so fp16 gets two orders of magnitude of room, fp32 five.
#: int8 (ONNX Runtime dynamic quantization, for CPUs with VNNI/AMX) is held to the fp16 file's bound; a
#: file that misses it is left out of the bundle (its figures kept in the manifest), fp32/fp16 stop the export
VISION_TOLERANCES: Mapping[str, float] = MappingProxyType({"fp32": 0.99999, "fp16": 0.999, "int8": 0.999})


@dataclass(frozen=True)
class VisionSpec:
    """The vision side: tower, projector and preprocessing, as the exporters, the reference and the
    runtime's preprocessing (named in the manifest's `vision.preprocess`) implement them."""

    tower: str  # "clip": transformers' CLIPVisionModel, exported to ONNX and mmproj
    projector: str  # "mlp2x_gelu": Linear, exact GELU, Linear
    #: "llava-pad": pad to square on the mean colour, resize the shortest edge, centre crop, normalise
    preprocess: str

    #: whether every image takes the same number of prompt positions (a fixed-size tower such as
    #: CLIP's); False where the image keeps its aspect ratio and the count follows its size
    fixed_size: bool = True

    def tokens_per_image(self, tower_config: Mapping[str, Any]) -> int | None:
        """Prompt positions one image takes: the patch grid (the CLS token is dropped); None when it
        varies with the image (the runtime counts each image's)."""
        if not self.fixed_size:
            return None
        return (int(tower_config["image_size"]) // int(tower_config["patch_size"])) ** 2


#: LLaVA-1.5's vision side: CLIP ViT (L/14-336 in both published checkpoints), 2-layer MLP projector.
LLAVA15_CLIP = VisionSpec(tower="clip", projector="mlp2x_gelu", preprocess="llava-pad")


@dataclass(frozen=True)
class SynthRecipe:
    """How `huatuo convert synth` writes a tiny random checkpoint in this family's real layout."""

    #: writes the tokenizer files into a folder: (folder, vocab size, marker style, real vocab GGUF
    #: or None) -> {"size", "bos_token_id", "eos_token_id", "pad_token_id"}
    write_tokenizer: Callable[[Path, int, str, Path | None], dict]
    #: config.json keys the published checkpoint carries beyond LLaVA's, given the layer count
    config: Callable[[int], dict[str, Any]]
    #: embedding rows rounded up to a multiple of this beyond the tokenizer (None: exactly the tokenizer)
    vocab_multiple: int | None
    #: the llama.cpp vocab-only GGUF (in the llama-cpp-python sdist) holding the real vocabulary
    real_vocab: str
    #: writes the whole checkpoint (folder, SynthSpec) where transformers' own class saves it; None:
    #: the LLaVA writer of `huatuo_convert.synth` with the fields above
    write_checkpoint: Callable[[Path, Any], None] | None = None


@dataclass(frozen=True)
class ModelFamily:
    """One model family, from the HF files to the bundle's card."""

    name: str  # huatuo's id, `--arch` of `convert synth` and the manifest's `architecture`
    summary: str  # one line for help texts
    hf_architecture: str  # config.json `architectures[0]` of the vision-language checkpoint
    model_type: str  # its config.json `model_type`
    #: the language model alone (config `architectures[0]` / `text_config.model_type` of the -hf layout)
    text_architecture: str
    text_model_type: str
    llm: LlmArch  # HF tensor names and hyper-parameters -> GGUF (`gguf_arch`)
    #: the vocabulary writer: (checkpoint, embedding rows) -> what the GGUF's tokenizer.ggml.* holds
    vocab: Callable[[LlavaCheckpoint, int], GgufVocab]
    #: the PyTorch reference of the language model: transformers class and its config
    reference_class: str
    reference_config: Callable[[Any, dict[str, Any], Mapping[str, Any]], Any]
    synth: SynthRecipe
    card: str  # the model card (models/cards/<card>.md) the published checkpoint maps to
    vision: VisionSpec = LLAVA15_CLIP
    prompt_format: str = PROMPT_FORMAT
    positions: str = POSITIONS_LINEAR
    llm_tolerances: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: LLM_TOLERANCES)
    vision_tolerances: Mapping[str, float] = field(default_factory=lambda: VISION_TOLERANCES)
    #: `convert synth`'s default family
    default: bool = False

    @property
    def architectures(self) -> tuple[str, str]:
        """The HF architecture names this family converts: with vision, and the language model alone."""
        return (self.hf_architecture, self.text_architecture)
