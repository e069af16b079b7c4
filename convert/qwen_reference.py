"""The PyTorch oracle of a Qwen2.5-VL checkpoint: transformers' own model, processor and generation.

Everything here is transformers' code path, loaded from the checkpoint folder as `from_pretrained`
loads it (either config generation, either tensor-name style): `Qwen2VLImageProcessorPil` with the
checkpoint's preprocessor_config.json, the family's transformers class in float32 with eager
attention (its own vision tower, `get_rope_index` M-RoPE positions and KV cache), `generate` for the
greedy answer. Only the prompt's token ids come from huatuo's chunking (`ReferenceTokenizer`, the
checkpoint's tokenizer on the ChatML format's pieces), with each `<|image_pad|>` repeated once per
merged patch as Qwen2.5-VL's processor expands it. The repetition penalty is HF's processor over
the answer's tokens, the semantics of huatuo's runtime (docs/model.md "Decoding").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from huatuo_cli.engine.prompt import prompt_format
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.reference_tokenizer import ReferenceTokenizer, load_reference_tokenizer


@dataclass
class QwenVLReference:
    """transformers' Qwen2.5-VL on one checkpoint folder."""

    ckpt: LlavaCheckpoint
    tokenizer: ReferenceTokenizer
    model: Any
    processor: Any

    @classmethod
    def load(cls, src: Path | str | LlavaCheckpoint) -> QwenVLReference:
        torch = require("torch")
        transformers = require("transformers")
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
        transformers.logging.set_verbosity_error()
        model = getattr(transformers, ckpt.family.hf_architecture).from_pretrained(
            str(ckpt.root), dtype=torch.float32, attn_implementation="eager").eval()
        processor = Qwen2VLImageProcessorPil(**ckpt.preprocessor_config)
        tokenizer = load_reference_tokenizer(ckpt.root, prompt_format(ckpt.family.prompt_format))
        return cls(ckpt=ckpt, tokenizer=tokenizer, model=model, processor=processor)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def pixels(self, images: list[Any]) -> tuple[Any, Any]:
        """(pixel_values, image_grid_thw) from transformers' own image processor."""
        out = self.processor(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def image_embeds(self, images: list[Any]) -> list[np.ndarray]:
        """Per image [merged patches, hidden]: the tower's output as the model splices it."""
        torch = require("torch")
        if not images:
            return []
        pixel_values, grid = self.pixels(images)
        with torch.no_grad():
            out = self.model.model.visual(pixel_values, grid_thw=grid)
        merged = getattr(out, "pooler_output", out).float().numpy()
        sizes = [int(t * h * w) // 4 for t, h, w in grid.tolist()]
        return list(np.split(merged, np.cumsum(sizes)[:-1]))

    def input_ids(self, prompt: str, images: list[Any]) -> tuple[list[int], Any, Any]:
        """The prompt's ids with each image's `<|image_pad|>` expanded, and the processor's pixels."""
        chunks = self.tokenizer.encode_chunks(prompt)
        if len(chunks) - 1 != len(images):
            raise ValueError(f"{len(chunks) - 1} image places for {len(images)} images")
        pixel_values, grid = self.pixels(images) if images else (None, None)
        ids = list(chunks[0])
        for i, chunk in enumerate(chunks[1:]):
            t, h, w = grid[i].tolist()
            ids += [self.image_token_id] * (t * h * w // 4) + list(chunk)
        return ids, pixel_values, grid

    def _vision_inputs(self, ids: list[int], pixel_values: Any, grid: Any) -> dict[str, Any]:
        """What the processor hands the model besides the ids: pixels, grids, and which positions are
        image tokens (`mm_token_type_ids`, without which transformers numbers every position 1D)."""
        torch = require("torch")
        if pixel_values is None:
            return {}
        types = (torch.tensor([ids]) == self.image_token_id).int()
        return {"pixel_values": pixel_values, "image_grid_thw": grid, "mm_token_type_ids": types}

    def greedy(self, prompt: str, images: list[Any], max_new_tokens: int, *, repetition_penalty: float = 1.0) -> list[int]:
        """Greedy answer token ids (stops at `<|im_end|>` or `<|endoftext|>`, not included)."""
        torch = require("torch")
        transformers = require("transformers")
        ids, pixel_values, grid = self.input_ids(prompt, images)
        prompt_len = len(ids)

        class PenaltyOnAnswer(transformers.LogitsProcessor):
            """HF's repetition penalty over the answer's tokens only."""

            def __call__(self, input_ids, scores):
                answer = input_ids[:, prompt_len:]
                if repetition_penalty == 1.0 or answer.shape[1] == 0:
                    return scores
                return transformers.RepetitionPenaltyLogitsProcessor(repetition_penalty)(answer, scores)

        stops = [self.tokenizer.eos_id, *(self.model.generation_config.eos_token_id or [])]
        stops = sorted({int(s) for s in stops if s is not None})
        extra = self._vision_inputs(ids, pixel_values, grid)
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, prompt_len, dtype=torch.long),
                                      max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0,
                                      temperature=None, top_p=None, top_k=None,
                                      logits_processor=transformers.LogitsProcessorList([PenaltyOnAnswer()]),
                                      eos_token_id=stops, pad_token_id=stops[0], **extra)
        answer = [int(t) for t in out[0, prompt_len:]]
        return answer[: next((i for i, t in enumerate(answer) if t in stops), len(answer))]

    def answer(self, question: str, images: list[Any], max_new_tokens: int, *, repetition_penalty: float = 1.2,
               preprocess_config: Any = None) -> Any:
        """Greedy answer (a `reference.ReferenceAnswer`) to one question about `images` (PIL), preprocessed by
        transformers' own image processor (`preprocess_config` is not used: the processor is the reference)."""
        from huatuo_cli.engine.prompt import Turn
        from huatuo_convert.reference import ReferenceAnswer

        prompt = self.tokenizer.fmt.render([Turn(question, images=len(images))])
        ids = self.greedy(prompt, images, max_new_tokens, repetition_penalty=repetition_penalty)
        return ReferenceAnswer(prompt_tokens=len(self.input_ids(prompt, images)[0]), tokens=ids,
                               text=self.tokenizer.decode(ids).strip())

    def logits(self, prompt: str, images: list[Any]) -> np.ndarray:
        """Logits [positions, vocab] of the whole prompt (transformers' positions, vision and all)."""
        torch = require("torch")
        ids, pixel_values, grid = self.input_ids(prompt, images)
        extra = self._vision_inputs(ids, pixel_values, grid)
        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids]), **extra).logits[0].float().numpy()


def qwen_end_to_end(bundle_dir: Path, llm_file: str, ref: QwenVLReference, *, question: str, tokens: int,
                    vision_dir: str = "vision") -> dict[str, Any]:
    """First greedy tokens of the bundle (ONNX fp32 graph + GGUF with M-RoPE) vs transformers' own
    Qwen2.5-VL for one non-square validation image, as `bundle_build.end_to_end` does for LLaVA."""
    from huatuo_cli.engine.encoder import FP32_NAME, PREPROCESSOR_NAME, QwenImageEncoder
    from huatuo_cli.engine.llm import LlamaEngine, Sampling
    from huatuo_cli.engine.prompt import Turn
    from huatuo_cli.engine.qwen_vision import QwenVisionConfig
    from huatuo_cli.engine.session import interleave
    from huatuo_convert.onnx_validate import validation_images

    fmt = ref.tokenizer.fmt
    image = validation_images(336)[2][1]  # "wide": a grid that is not square
    prompt = fmt.render([Turn(question, images=1)])
    expected = ref.greedy(prompt, [image], tokens, repetition_penalty=Sampling().repetition_penalty)
    window = int(ref.ckpt.config["vision_config"].get("window_size", 112))
    config = QwenVisionConfig.from_file(bundle_dir / vision_dir / PREPROCESSOR_NAME, window_size=window)
    encoder = QwenImageEncoder(bundle_dir / vision_dir / FP32_NAME, config, device="cpu")
    embeds = encoder.encode([image])
    reference_image = ref.image_embeds([image])[0]
    engine = LlamaEngine(bundle_dir / llm_file, n_ctx=max(512, len(embeds[0]) + 256), positions="mrope",
                         stop_strings=fmt.stop_strings)
    try:
        got = engine.generate(interleave(engine.tokenize(prompt), embeds), Sampling(max_tokens=tokens))
    finally:
        engine.close()
    n = min(len(expected), len(got.tokens))
    agree = next((i for i in range(n) if expected[i] != got.tokens[i]), n)
    a, b = embeds[0].rows.ravel().astype(np.float64), reference_image.ravel().astype(np.float64)
    return {
        "tokens_compared": max(len(expected), len(got.tokens)),
        "identical": expected == got.tokens,
        "first_divergence": None if expected == got.tokens else agree,
        "reference_stopped_early": len(expected) < tokens,
        "image_grid": list(embeds[0].grid),
        "image_embedding_cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
    }


#: conversations the chat-template gate renders both ways: (images, question, answer) per turn
TEMPLATE_CASES: tuple[tuple[tuple[int, str, str | None], ...], ...] = (
    ((1, "Is there a pleural effusion?", None),),
    ((2, "Compare the two views.", "The left base is opaque."), (0, "How large is it?", None)),
    ((0, "No image: what is a Kerley B line?", None),),
)


def check_chat_template(ckpt: LlavaCheckpoint) -> dict[str, Any]:
    """The checkpoint's own chat template (chat_template.json, chat_template.jinja or tokenizer_config.json)
    rendered by transformers for a few conversations, against the family's prompt format: any
    difference refuses the checkpoint (huatuo would send the model a prompt it was not trained on)."""
    import json

    from huatuo_cli.engine.prompt import Turn
    from huatuo_cli.errors import HuatuoError

    transformers = require("transformers")
    fmt = prompt_format(ckpt.family.prompt_format)
    template = None
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        path = ckpt.root / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            template = text if name.endswith(".jinja") else json.loads(text).get("chat_template")
            if template:
                break
    if not template:
        raise HuatuoError(f"{ckpt.root} has no chat template (chat_template.json, chat_template.jinja or "
                          "tokenizer_config.json's chat_template)",
                          hint="copy the processor files of the original checkpoint next to config.json")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(ckpt.root))
    for case in TEMPLATE_CASES:
        messages: list[dict[str, Any]] = []
        turns = []
        for images, question, answer in case:
            content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
            messages.append({"role": "user", "content": content})
            if answer is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            turns.append(Turn(question, images=images, answer=answer))
        theirs = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        ours = fmt.render(turns)
        if theirs != ours:
            at = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b), min(len(theirs), len(ours)))
            raise HuatuoError(f"the checkpoint's chat template renders a conversation differently from huatuo's {fmt.name} "
                              f"format at character {at}: {theirs[max(0, at - 20):at + 30]!r} vs {ours[max(0, at - 20):at + 30]!r}",
                              hint="huatuo would prompt the model as it was not trained; this checkpoint needs its own prompt format")
    return {"chat_template": "identical", "conversations": len(TEMPLATE_CASES)}
