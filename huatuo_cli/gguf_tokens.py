"""Tokenize a prompt with a GGUF's vocabulary exactly as the reference tokenizer does.

The runtime and the converter's verification both call `encode_chunks`, so the token ids the
workstation sends are the ones whose parity was checked at conversion time.

Chunks between `<image>` markers are tokenized separately, BOS on the first only (LLaVA's
`tokenizer_image_token`). Sentencepiece (Yi / llama) prepends its dummy-prefix space once per
text, while llama.cpp's `add_space_prefix` also inserts one after every special or user-defined
token (such as `<|user|>`); so sentencepiece GGUFs are written with `add_space_prefix = false`
and the converter records the prefix in `huatuo.tokenizer.chunk_prefix`, which is prepended to
each non-empty chunk here. Byte-level BPE (Qwen2) has no prefix.
"""

from __future__ import annotations

import re
from typing import Any

from huatuo_cli.prompt import TEMPLATE_MARKERS, split_at_images

CHUNK_PREFIX_KEY = "huatuo.tokenizer.chunk_prefix"


def chunk_prefix(llama: Any) -> str:
    """The text prepended to each non-empty chunk (from the GGUF metadata of a `llama_cpp.Llama`)."""
    return str(llama.metadata.get(CHUNK_PREFIX_KEY, ""))


_MARKERS = re.compile("(" + "|".join(re.escape(m) for m in TEMPLATE_MARKERS) + ")")


def encode_text(llama: Any, text: str, *, add_bos: bool = False) -> list[int]:
    """One text chunk. Only the prompt template's own markers (`<|user|>`, `<|assistant|>`) become
    control tokens; all other text, the user's question above all, is tokenized with
    `special=False`, so `<|endoftext|>` typed in a question is text, never end-of-text.

    llama.cpp splits at special tokens and tokenizes the pieces separately when `special=True`, so
    splitting here first gives the same ids for a prompt without foreign control text.
    """
    if text:
        text = chunk_prefix(llama) + text
    ids: list[int] = []
    if add_bos:
        ids += llama.tokenize(b"", add_bos=True, special=True)
    for piece in _MARKERS.split(text):
        if piece:
            ids += llama.tokenize(piece.encode("utf-8"), add_bos=False, special=piece in TEMPLATE_MARKERS)
    return ids


def encode_chunks(llama: Any, prompt: str) -> list[list[int]]:
    """Token ids of each text chunk between image placeholders (N images give N+1 chunks)."""
    return [encode_text(llama, chunk, add_bos=(i == 0)) for i, chunk in enumerate(split_at_images(prompt))]
