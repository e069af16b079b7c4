"""Validated samples -> encoded training items, with the context-length check; the torch Dataset.

Images are rendered (huatuo imaging) and preprocessed (the runtime's numpy CLIP preprocessing,
itself tested against transformers') when an item is read, so that training sees exactly the
pixels `huatuo ask` will feed the ONNX encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging import load_image
from huatuo_convert.finetune.encode import Encoded, encode_turns
from huatuo_convert.finetune.records import DataFile, Problem, Sample
from huatuo_convert.reference_tokenizer import ReferenceTokenizer


@dataclass(frozen=True)
class Item:
    sample: Sample
    encoded: Encoded


def encode_file(data: DataFile, tokenizer: ReferenceTokenizer, tokens_per_image: int, max_length: int) -> list[Item]:
    """Encode every valid sample; tokenization and length problems join `data.problems`."""
    items: list[Item] = []
    for sample in data.samples:
        try:
            encoded = encode_turns(tokenizer, sample.turns, tokens_per_image)
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

    def __init__(self, items: list[Item], config: PreprocessConfig) -> None:
        self.items, self.config = items, config

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Encoded, Any]:
        item = self.items[index]
        return item.encoded, pixel_values(item.sample, self.config)
