"""Validated samples -> encoded training items, with the context-length check; the torch Dataset.

Images are rendered (huatuo imaging) and preprocessed (the runtime's numpy CLIP preprocessing,
itself tested against transformers') when an item is read, so that training sees exactly the
pixels `huatuo ask` will feed the ONNX encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging import load_image
from huatuo_convert.finetune.encode import Encoded, encode_turns
from huatuo_convert.finetune.records import DataFile, Problem, Sample
from huatuo_convert.reference_tokenizer import ReferenceTokenizer

if TYPE_CHECKING:
    from huatuo_convert.finetune.qwen import QwenTraining


@dataclass(frozen=True)
class Item:
    sample: Sample
    encoded: Encoded


def encode_file(data: DataFile, tokenizer: ReferenceTokenizer, tokens_per_image: int, max_length: int,
                qwen: QwenTraining | None = None) -> list[Item]:
    """Encode every valid sample; tokenization and length problems join `data.problems`. `qwen`: the
    Qwen2.5-VL base's encoding (ChatML, each image its own number of positions) instead of LLaVA's."""
    items: list[Item] = []
    for sample in data.samples:
        try:
            encoded = (qwen.encode(tokenizer, sample.turns, qwen.image_counts(sample)) if qwen is not None
                       else encode_turns(tokenizer, sample.turns, tokens_per_image))
        except HuatuoError as exc:
            data.problems.append(Problem(sample.line, str(exc)))
            continue
        if len(encoded.input_ids) > max_length:
            data.problems.append(Problem(sample.line, f"{len(encoded.input_ids)} positions (images included) exceed the "
                                                      f"context of {max_length}"))
            continue
        items.append(Item(sample, encoded))
    data.problems.sort(key=lambda p: p.line)
    return items


def pixel_values(sample: Sample, config: PreprocessConfig) -> Any:
    """float32 [n_images, 3, H, W] for a sample, None without images."""
    if not sample.images:
        return None
    images = [load_image(path, window=sample.window).frames[0] for path in sample.images]
    return torch.from_numpy(preprocess(images, config))


class Samples(torch.utils.data.Dataset[tuple[Encoded, Any]]):
    """A map-style dataset (what torch's DataLoader needs: len and getitem) of (Encoded, pixels)."""

    def __init__(self, items: list[Item], config: PreprocessConfig | None, pixels: Callable[[Sample], Any] | None = None) -> None:
        """`pixels`: the base's own image inputs for a sample (Qwen2.5-VL's); default LLaVA's with `config`."""
        self.items, self.config, self.pixels = items, config, pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Encoded, Any]:
        item = self.items[index]
        if self.pixels is not None:
            return item.encoded, self.pixels(item.sample)
        assert self.config is not None
        return item.encoded, pixel_values(item.sample, self.config)
