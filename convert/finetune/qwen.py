"""Fine-tuning a Qwen2.5-VL checkpoint (HuatuoGPT-Vision-7B-Qwen2.5VL): what differs from LLaVA's.

The trainable model is transformers' own class of the family (its `hf_architecture`: the model
`huatuo convert all` verifies against), LoRA on its language model's decoder linears only (a regex
anchored on `model.language_model.layers`: the tower's blocks have `mlp.*_proj` too), the patch
merger trained in full and saved with the adapters (peft `modules_to_save`), the vision transformer
frozen. A record's prompt is the ChatML format the runtime sends (`qwen2-vl-chatml`), each image's
`<|image_pad|>` repeated once per merged patch of that image at the size the processor gives it;
labels cover each answer and its `<|im_end|>`. Pixels are the runtime's own Qwen2-VL preprocessing
(`engine/qwen_vision.py`, tested equal to transformers'), so training sees what `huatuo ask` feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from huatuo_cli.engine.prompt import IM_END, Turn, prompt_format
from huatuo_cli.engine.qwen_vision import QwenVisionConfig, merged_grid, patchify
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_cli.imaging import load_image
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.finetune.encode import IGNORE, Encoded
from huatuo_convert.finetune.model import LLM_LINEARS, target_regex
from huatuo_convert.finetune.records import Sample
from huatuo_convert.reference_tokenizer import ReferenceTokenizer, load_reference_tokenizer

#: the wrapper's attribute holding transformers' model: state-dict names start with it
MODEL = "qwen."
MERGER = "merger"


class QwenForTraining(torch.nn.Module):
    """transformers' Qwen2.5-VL with the inputs its processor would add (`mm_token_type_ids`)."""

    def __init__(self, qwen: Any) -> None:
        super().__init__()
        self.qwen = qwen
        self.image_token_id = int(qwen.config.image_token_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None) -> Any:
        extra: dict[str, Any] = {}
        if pixel_values is not None:
            extra = {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw,
                     "mm_token_type_ids": (input_ids == self.image_token_id).int()}
        return self.qwen(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False, **extra)

    def tower_eval(self) -> None:
        self.qwen.model.visual.eval()


class QwenTraining:
    """The family-specific steps of `huatuo finetune` and `finetune merge` for one Qwen2.5-VL base."""

    def __init__(self, ckpt: LlavaCheckpoint) -> None:
        self.ckpt = ckpt
        self.fmt = prompt_format(ckpt.family.prompt_format)
        self.vision = QwenVisionConfig.from_dict(ckpt.preprocessor_config,
                                                 window_size=int(ckpt.config["vision_config"].get("window_size", 112)))
        self.image_token_id = int(ckpt.config["image_token_id"])

    def tokenizer(self) -> ReferenceTokenizer:
        return load_reference_tokenizer(self.ckpt.root, self.fmt)

    # -- records ---------------------------------------------------------------------------------
    def image_counts(self, sample: Sample) -> list[int]:
        """Prompt positions of each of the sample's images (merged patches at the processor's size)."""
        counts = []
        for path in sample.images:
            rows, cols = merged_grid(load_image(path, window=sample.window).frames[0].size, self.vision)
            counts.append(rows * cols)
        return counts

    def encode(self, tokenizer: ReferenceTokenizer, turns: Sequence[Turn], counts: Sequence[int]) -> Encoded:
        """Ids and labels: each turn's prompt as the runtime renders and cuts it (ChatML, the markers are
        special tokens), images expanded; each answer and its `<|im_end|>` supervised where it stands."""
        end = tokenizer.encode_text(IM_END)
        if len(end) != 1:
            raise HuatuoError(f"the tokenizer has no {IM_END} token")
        pads = iter(counts)
        ids: list[int] = []
        labels: list[int] = []
        consumed = ""  # the conversation's text through the previous answer's end
        for i, turn in enumerate(turns):
            prompt = self.fmt.render([*turns[:i], Turn(turn.question, images=turn.images)])
            if not prompt.startswith(consumed):
                raise HuatuoError("the prompt format renders the history differently as the conversation grows")
            chunks = self.fmt.encode(prompt[len(consumed):], tokenizer.encode_text)
            prompt_ids = list(chunks[0])
            for chunk in chunks[1:]:
                prompt_ids += [self.image_token_id] * next(pads) + list(chunk)
            head = "assistant\n"  # the text piece an answer shares in the runtime's tokenization
            answer = tokenizer.encode_text(turn.answer or "")
            if tokenizer.encode_text(head + (turn.answer or "")) != tokenizer.encode_text(head) + answer:
                raise HuatuoError("an answer does not tokenize the same after the assistant marker as on its own "
                                  "(a token spans the answer's boundary)")
            ids += prompt_ids + answer + end
            labels += [IGNORE] * len(prompt_ids) + answer + end
            consumed = prompt + (turn.answer or "") + f"{IM_END}\n"
            if i < len(turns) - 1:
                newline = tokenizer.encode_text("\n")
                ids += newline
                labels += [IGNORE] * len(newline)
        return Encoded(input_ids=ids, labels=labels)

    def pixels(self, sample: Sample) -> dict[str, Any] | None:
        if not sample.images:
            return None
        values, grids = [], []
        for path in sample.images:
            pv, grid = patchify(load_image(path, window=sample.window).frames[0], self.vision)
            values.append(pv)
            grids.append(grid)
        return {"pixel_values": torch.from_numpy(np.concatenate(values)), "image_grid_thw": torch.tensor(grids)}

    # -- model -----------------------------------------------------------------------------------
    def load_base(self, dtype: torch.dtype = torch.float32) -> QwenForTraining:
        transformers = require("transformers")
        transformers.logging.set_verbosity_error()
        qwen = getattr(transformers, self.ckpt.family.hf_architecture).from_pretrained(
            str(self.ckpt.root), dtype=dtype, attn_implementation="eager")
        model = QwenForTraining(qwen)
        model.requires_grad_(False)
        model.qwen.model.visual.merger.float()
        return model

    def add_lora(self, model: QwenForTraining, *, rank: int, alpha: int, dropout: float, train_projector: bool,
                 linears: Sequence[str] = LLM_LINEARS) -> Any:
        peft = require("peft")
        config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                                 target_modules=target_regex(tuple(linears), MODEL + "model.language_model.layers."),
                                 modules_to_save=[MERGER] if train_projector else None)
        return peft.get_peft_model(model, config)

    def checkpoint_name(self, state_name: str) -> str | None:
        """The checkpoint view's name (`convert/qwen_vl.py`) of a merged model's state-dict entry."""
        from huatuo_convert.qwen_vl import VISUAL_PREFIX

        name = state_name.removeprefix(MODEL)
        for prefix, target in (("model.language_model.", "model."), ("model.visual.", VISUAL_PREFIX), ("lm_head.", "lm_head.")):
            if name.startswith(prefix):
                return target + name[len(prefix):]
        return None

    def probe(self) -> dict[str, Any]:
        """A fixed non-square image + question, as QwenForTraining inputs."""
        from huatuo_convert.onnx_validate import validation_images

        image = validation_images(336)[2][1]
        pv, grid = patchify(image, self.vision)
        prompt = self.fmt.render([Turn("Describe the findings.", images=1)])
        chunks = self.fmt.encode(prompt, self.tokenizer().encode_text)
        ids = list(chunks[0]) + [self.image_token_id] * (grid[1] * grid[2] // 4) + list(chunks[1])
        return {"input_ids": torch.tensor([ids]), "pixel_values": torch.from_numpy(pv),
                "image_grid_thw": torch.tensor([grid])}

