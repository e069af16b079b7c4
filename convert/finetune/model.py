"""The trainable model: the project's PyTorch reference modules, LoRA on the language model only.

Training runs the very modules `huatuo convert all` verifies against (`reference.build_llm`,
`reference.build_vision`, `VisionEncoder.features`), so the merged checkpoint is the model that
the fidelity gates compare with. LoRA targets are a regular expression anchored on the language
model's decoder layers: bare names such as `q_proj` would also match CLIP's attention (DESIGN.md
7). The projector is trained in full and saved with the adapters (peft `modules_to_save`), so
it cannot be forgotten at merge; the vision tower is frozen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from huatuo_cli.extras import require
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.finetune.encode import IMAGE_TOKEN
from huatuo_convert.reference import VisionEncoder, build_llm, build_vision

#: the language model's linear layers LoRA may adapt (the llama-style decoder's names, `gguf_arch`)
LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: module names of the wrapper, as peft and the merge see them
LLM_PREFIX = "language_model."
PROJECTOR = "mm_projector"
TOWER = "vision_tower"


def target_regex(linears: tuple[str, ...] = LLM_LINEARS, layers: str = LLM_PREFIX + "model.layers.") -> str:
    """peft `target_modules` as a regex (full match): only decoder layers of the language model, whose
    module names start with `layers` (LLaVA's wrapper by default; Qwen2.5-VL's in `finetune.qwen`)."""
    unknown = sorted(set(linears) - set(LLM_LINEARS))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {LLM_LINEARS}")
    return re.escape(layers) + r"\d+\.(?:self_attn|mlp)\.(?:" + "|".join(linears) + ")"


class LlavaForTraining(torch.nn.Module):
    """CLIP tower + projector + causal LM; image features replace the IMAGE_TOKEN positions."""

    def __init__(self, vision_tower: Any, mm_projector: Any, language_model: Any, select_layer: int,
                 select_feature: str) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.language_model = language_model
        self.select_layer, self.select_feature = select_layer, select_feature

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected features [N, tokens, hidden]; the tower is frozen, so no graph is kept for it."""
        tower_dtype = next(self.vision_tower.parameters()).dtype
        features: Callable[[torch.Tensor], torch.Tensor] = VisionEncoder(
            self.vision_tower, None, self.select_layer, self.select_feature).features
        with torch.no_grad():
            feats = features(pixel_values.to(tower_dtype))
        projected: torch.Tensor = self.mm_projector(feats.to(next(self.mm_projector.parameters()).dtype))
        return projected

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None) -> Any:
        image_mask = input_ids == IMAGE_TOKEN
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
        if bool(image_mask.any()):
            if pixel_values is None:
                raise ValueError("image positions in the batch but no pixel values")
            image = self.image_features(pixel_values)
            flat = image.reshape(-1, image.shape[-1]).to(embeds.dtype)
            if flat.shape[0] != int(image_mask.sum()):
                raise ValueError(f"{int(image_mask.sum())} image positions for {flat.shape[0]} image features")
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), flat)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)


def load_base(ckpt: LlavaCheckpoint, dtype: torch.dtype = torch.float32) -> LlavaForTraining:
    """The checkpoint as a LlavaForTraining: frozen weights in `dtype`, the projector in float32."""
    if not ckpt.has_vision:
        raise ValueError(f"{ckpt.hf_architecture} has no vision tower")
    llm = build_llm(ckpt, dtype)
    clip, projector = build_vision(ckpt, dtype)
    model = LlavaForTraining(clip, projector.float(), llm, ckpt.select_layer, ckpt.select_feature)
    model.requires_grad_(False)
    return model


def add_lora(model: LlavaForTraining, *, rank: int, alpha: int, dropout: float, train_projector: bool,
             linears: tuple[str, ...] = LLM_LINEARS) -> Any:
    """peft LoRA on the language model's decoder linears; the projector trained and saved alongside."""
    peft = require("peft")
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
        target_modules=target_regex(linears),
        modules_to_save=[PROJECTOR] if train_projector else None,
    )
    return peft.get_peft_model(model, config)


def enable_checkpointing(model: Any) -> None:
    """Recompute the language model's layer activations in the backward pass (non-reentrant: the
    inputs are embeddings of a frozen table, which need no gradient)."""
    inner = model.base_model.model
    llm = inner.language_model if hasattr(inner, "language_model") else inner.qwen  # LLaVA's wrapper, or Qwen2.5-VL's
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.23's name
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def tower_eval(model: Any) -> None:
    """The frozen vision tower in eval mode inside a peft model being trained (no dropout, fixed norms)."""
    inner = model.base_model.model
    if hasattr(inner, "tower_eval"):
        inner.tower_eval()
    else:
        inner.vision_tower.eval()


def trainable_names(model: Any) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]
