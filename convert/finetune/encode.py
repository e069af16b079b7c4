"""A record as token ids and labels, built with the runtime's own prompt code; batches of them.

The prompt of every turn is `huatuo_cli.engine.prompt.render` (what `huatuo ask` sends), tokenized chunk
by chunk between images as the runtime and the reference do (`ReferenceTokenizer.encode_chunks`).
Each image occupies `tokens_per_image` positions holding `IMAGE_TOKEN`; the model puts the
projected image features there. Labels are `IGNORE` (-100) everywhere except on the answers: the
last answer is followed by EOS (the runtime stops on it), earlier answers are supervised where
they stand in the history exactly as the runtime tokenizes it for a follow-up question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from huatuo_cli.engine.prompt import ASSISTANT_MARKER, Turn, render, tokenizer_calls
from huatuo_cli.errors import HuatuoError
from huatuo_convert.reference_tokenizer import ReferenceTokenizer

#: LLaVA's IMAGE_TOKEN_INDEX: never a real token id
IMAGE_TOKEN = -200
#: torch's cross-entropy ignore_index: positions that carry no loss
IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Token ids (IMAGE_TOKEN at image positions) and labels of the same length."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _with_images(chunks: list[list[int]], tokens_per_image: int) -> list[int]:
    """Chunks between images as one id list, each image `tokens_per_image` IMAGE_TOKEN positions."""
    ids: list[int] = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [IMAGE_TOKEN] * tokens_per_image + list(chunk)
    return ids


def prompt_ids(tokenizer: ReferenceTokenizer, turns: Sequence[Turn], tokens_per_image: int) -> list[int]:
    """The runtime's prompt for `turns` (the last one open) as one id list, images expanded."""
    return _with_images(tokenizer.encode_chunks(render(list(turns))), tokens_per_image)


def encode_turns(tokenizer: ReferenceTokenizer, turns: Sequence[Turn], tokens_per_image: int) -> Encoded:
    """Ids and labels for answered turns (every turn has an answer).

    The ids are what the runtime sends for the last question, every earlier turn in the history,
    then the last answer and EOS. The prompt is tokenized one official tokenizer call at a time
    (`prompt.tokenizer_calls`): an earlier answer stands in its own call, `<|assistant|>\n{answer} \n`,
    and is supervised there, after the marker's own tokens.
    """
    if tokenizer.eos_id is None:
        raise HuatuoError("the tokenizer has no EOS token; the model could not learn where an answer ends")
    *history, last = turns
    ids: list[int] = []
    labels: list[int] = []
    answers = iter(history)
    for call in tokenizer_calls(render([*history, Turn(question=last.question, images=last.images)])):
        call_ids = _with_images(tokenizer.encode_chunks(call), tokens_per_image)
        if call.startswith(ASSISTANT_MARKER):  # an earlier turn's answer (the open turn's call starts at <|user|>)
            head = f"{ASSISTANT_MARKER}\n"
            answered = tokenizer.encode_text(head + (next(answers).answer or ""))
            marker = tokenizer.encode_text(head)
            if answered[: len(marker)] != marker or call_ids[: len(answered)] != answered:
                raise HuatuoError("an earlier answer does not tokenize the same inside the history as on its own "
                                  "(a token spans the answer's boundary)")
            labels += [IGNORE] * len(marker) + answered[len(marker):] + [IGNORE] * (len(call_ids) - len(answered))
        else:
            labels += [IGNORE] * len(call_ids)
        ids += call_ids
    answer = tokenizer.encode_text(last.answer or "") + [tokenizer.eos_id]
    return Encoded(input_ids=ids + answer, labels=labels + answer)


def collate(items: Sequence[tuple[Encoded, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`, `labels`, `attention_mask`, and all pixel values in order."""
    from huatuo_cli.extras import require

    torch = require("torch")
    longest = max(len(e.input_ids) for e, _ in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, (enc, _) in enumerate(items):
        n = len(enc.input_ids)
        ids[row, :n] = torch.tensor(enc.input_ids)
        labels[row, :n] = torch.tensor(enc.labels)
        mask[row, :n] = 1
    pixels = [p for _, p in items if p is not None and len(p)]
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if pixels and isinstance(pixels[0], dict):  # Qwen2.5-VL: patches of every image and their grids
        batch["pixel_values"] = torch.cat([p["pixel_values"] for p in pixels])
        batch["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in pixels])
        return batch
    batch["pixel_values"] = torch.cat(pixels) if pixels else None
    return batch
