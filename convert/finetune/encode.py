"""A record as token ids and labels, built with the runtime's own prompt code; batches of them.

The prompt of every turn is `huatuo_cli.prompt.render` (what `huatuo ask` sends), tokenized chunk
by chunk between images as the runtime and the reference do (`ReferenceTokenizer.encode_chunks`).
Each image occupies `tokens_per_image` positions holding `IMAGE_TOKEN`; the model puts the
projected image features there. Labels are `IGNORE` (-100) everywhere except on the answers: the
last answer is followed by EOS (the runtime stops on it), earlier answers are supervised where
they stand in the history exactly as the runtime will re-tokenize it for a follow-up question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.prompt import Turn, render
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


def prompt_ids(tokenizer: ReferenceTokenizer, turns: Sequence[Turn], tokens_per_image: int) -> list[int]:
    """The runtime's prompt for `turns` (the last one open) as one id list, images expanded."""
    chunks = tokenizer.encode_chunks(render(list(turns)))
    ids: list[int] = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [IMAGE_TOKEN] * tokens_per_image + list(chunk)
    return ids


def encode_turns(tokenizer: ReferenceTokenizer, turns: Sequence[Turn], tokens_per_image: int) -> Encoded:
    """Ids and labels for answered turns (every turn has an answer)."""
    if tokenizer.eos_id is None:
        raise HuatuoError("the tokenizer has no EOS token; the model could not learn where an answer ends")
    ids: list[int] = []
    labels: list[int] = []
    for k, turn in enumerate(turns):
        history = [*turns[:k], Turn(question=turn.question, images=turn.images)]
        prompt = prompt_ids(tokenizer, history, tokens_per_image)
        _extend(ids, labels, prompt, supervised=False, what=f"turn {2 * k + 1}")
        # the answer tokenized in its context, as it will stand in a follow-up's history
        # (`{answer} \n<|user|>...`); the last one ends with EOS, where the runtime stops
        with_answer = _history_text_ids(tokenizer, turns[: k + 1], tokens_per_image)
        _extend(ids, labels, with_answer, supervised=True, what=f"turn {2 * k + 2}")
    ids.append(tokenizer.eos_id)
    labels.append(tokenizer.eos_id)
    return Encoded(input_ids=ids, labels=labels)


def _history_text_ids(tokenizer: ReferenceTokenizer, turns: Sequence[Turn], tokens_per_image: int) -> list[int]:
    """Ids of the prompt text up to the end of the last answer (without its trailing ` \\n`)."""
    full = render([*turns[:-1], Turn(question=turns[-1].question, images=turns[-1].images)]) + (turns[-1].answer or "")
    chunks = tokenizer.encode_chunks(full)
    ids: list[int] = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [IMAGE_TOKEN] * tokens_per_image + list(chunk)
    return ids


def _extend(ids: list[int], labels: list[int], longer: list[int], *, supervised: bool, what: str) -> None:
    """Append what `longer` adds to `ids`; it must start with `ids` (same tokens as the runtime)."""
    if longer[: len(ids)] != ids:
        raise HuatuoError(f"{what}: the conversation does not tokenize the same as a prefix of the next turn's "
                          "prompt (a token spans a turn boundary)")
    new = longer[len(ids):]
    ids += new
    labels += new if supervised else [IGNORE] * len(new)


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
    batch["pixel_values"] = torch.cat(pixels) if pixels else None
    return batch
