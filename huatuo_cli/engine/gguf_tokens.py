"""Tokenize a prompt with a GGUF's vocabulary exactly as the checkpoint's own tokenizer does.

The runtime and the converter's verification both call `encode_chunks`, so the token ids the
workstation sends are the ones whose parity was checked at conversion time.

As HuatuoGPT-Vision's `cli.py` does (docs/model.md "Tokenization"): the prompt is cut into the
pieces the official code tokenizes one call each (`PromptFormat.encode`: per turn part, then at
the `<image>` placeholders), each piece is tokenized whole, and no BOS is added anywhere
(`tokenizer(chunk, add_special_tokens=False)`). How the template's markers (`<|user|>`,
`<|assistant|>`) come out depends on the checkpoint, and the converter records which case it is in
`huatuo.tokenizer.markers`:

- `tokens`: the checkpoint's tokenizer defines them as added tokens. Its tokenizer splits them out
  of the text first and tokenizes the pieces apart; here the chunk is cut at the markers, each
  marker becomes its one token and the pieces between are tokenized as text.
- `text`: they are plain text (the base model's tokenizer defines no such tokens). The chunk is
  tokenized whole, so a byte-level BPE's pre-tokenizer may join `|>` with the newline after it, as
  the official code does.

GGUFs written before the key existed were converted only from checkpoints whose markers were
tokens (the parity gate refused the others), so a missing key means `tokens`.

Everything but the template's markers, the user's question above all, is tokenized with
`special=False`: `<|endoftext|>` typed in a question is text, never end-of-text (the official code
would make it the control token: a deliberate difference, docs/model.md).

Sentencepiece prepends its dummy-prefix space once per text, while llama.cpp's
`add_space_prefix` also inserts one after every special or user-defined token; so sentencepiece
GGUFs are written with `add_space_prefix = false` and the converter records the prefix in
`huatuo.tokenizer.chunk_prefix`, prepended here to each non-empty chunk. Byte-level BPE has no prefix.
"""

from __future__ import annotations

import re
from typing import Any

from huatuo_cli.engine.prompt import PROMPT_FORMAT, PromptFormat, prompt_format
from huatuo_cli.errors import HuatuoError

CHUNK_PREFIX_KEY = "huatuo.tokenizer.chunk_prefix"
#: the prompt format the GGUF was converted and checked for (GGUFs from before the key: huatuo-v1)
PROMPT_FORMAT_KEY = "huatuo.prompt_format"
MARKERS_KEY = "huatuo.tokenizer.markers"
#: the values of MARKERS_KEY
MARKERS_AS_TOKENS = "tokens"
MARKERS_AS_TEXT = "text"
MARKER_STYLES = (MARKERS_AS_TOKENS, MARKERS_AS_TEXT)


def chunk_prefix(llama: Any) -> str:
    """The text prepended to each non-empty chunk (from the GGUF metadata of a `llama_cpp.Llama`)."""
    return str(llama.metadata.get(CHUNK_PREFIX_KEY, ""))


def marker_style(llama: Any) -> str:
    """`tokens` or `text`: how the checkpoint's tokenizer treats the template's markers."""
    style = str(llama.metadata.get(MARKERS_KEY, MARKERS_AS_TOKENS))
    if style not in MARKER_STYLES:
        raise HuatuoError(f"the LLM file says its prompt markers are {style!r}, which this huatuo does not know",
                          hint="upgrade huatuo-cli or re-convert the bundle")
    return style


def gguf_prompt_format(llama: Any) -> PromptFormat:
    """The prompt format the GGUF says it was converted for."""
    return prompt_format(str(llama.metadata.get(PROMPT_FORMAT_KEY, PROMPT_FORMAT)))


def _marker_split(fmt: PromptFormat) -> re.Pattern[str]:
    return re.compile("(" + "|".join(re.escape(m) for m in fmt.template_markers) + ")")


def encode_text(llama: Any, text: str, fmt: PromptFormat | None = None) -> list[int]:
    """One piece of text, as one call of the checkpoint's tokenizer tokenizes it (module docstring); no BOS."""
    if not text:
        return []
    fmt = fmt or gguf_prompt_format(llama)
    text = chunk_prefix(llama) + text
    if marker_style(llama) == MARKERS_AS_TEXT:
        return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    ids: list[int] = []
    for piece in _marker_split(fmt).split(text):
        if piece:
            ids += llama.tokenize(piece.encode("utf-8"), add_bos=False, special=piece in fmt.template_markers)
    return ids


def encode_chunks(llama: Any, prompt: str) -> list[list[int]]:
    """Token ids of each text chunk between image placeholders (N images give N+1 chunks)."""
    fmt = gguf_prompt_format(llama)
    return fmt.encode(prompt, lambda text: encode_text(llama, text, fmt))
