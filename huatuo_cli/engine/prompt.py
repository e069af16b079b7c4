"""HuatuoGPT-Vision's prompt format, shared by the runtime and the PyTorch reference.

A bundle's manifest names its prompt format; `prompt_format` turns the name into what the runtime
renders and stops on, and refuses a name this huatuo does not know. One definition, so that what
the workstation sends to llama.cpp is exactly what the fidelity checks were measured on
(docs/model.md): per past turn `<|user|>\\n{h}\\n<|assistant|>\\n{answer} \\n`,
the open turn ends with `<|user|>\\n{h}\\n<|assistant|>\\n`, images prepended as `<image>\\n`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from huatuo_cli.errors import HuatuoError

IMAGE_PLACEHOLDER = "<image>"
#: The official CLI accepts at most this many images in one conversation.
MAX_IMAGES = 6
USER_MARKER = "<|user|>"
ASSISTANT_MARKER = "<|assistant|>"
#: The template's own markers: the only prompt text tokenized as control tokens (`gguf_tokens`);
#: everything else, above all the user's text, is plain text whatever it looks like.
TEMPLATE_MARKERS = (USER_MARKER, ASSISTANT_MARKER)
#: Markers users may not inject: the official code's input moderation, plus the turn markers
#: (a question containing `<|assistant|>` must not open a forged turn).
_STRIPPED = (IMAGE_PLACEHOLDER, "<s>", "</s>", *TEMPLATE_MARKERS)
PROMPT_FORMAT = "huatuo-v1"


def moderate(text: str) -> str:
    """Remove the markers a user could use to forge images or turn boundaries.

    Repeated until nothing changes: removing one marker must not join its neighbours into
    another (`<im<image>age>` would otherwise leave `<image>`).
    """
    previous = None
    while previous != text:
        previous = text
        for token in _STRIPPED:
            text = text.replace(token, "")
    return text.strip()


def check_question(text: str) -> str:
    """The question as given, or a HuatuoError if it cannot be asked: one rule for ask and batch.

    A question that is empty once moderated is refused (there is nothing to answer); one that is
    not valid UTF-8 (bytes the terminal could not decode reach Python as lone surrogates) is
    refused before any model is loaded, instead of failing when results or the audit are written.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HuatuoError("the question is not valid UTF-8 text",
                          hint="set a UTF-8 locale (e.g. LANG=C.UTF-8) or fix the question's encoding") from None
    if not moderate(text):
        raise HuatuoError("empty question", hint="ask something, e.g. \"Describe the findings.\"")
    return text


@dataclass(frozen=True)
class Turn:
    """One question (with the images given in it) and, for past turns, the answer."""

    question: str
    images: int = 0
    answer: str | None = None


def render(turns: list[Turn]) -> str:
    """The full prompt text; the last turn must be open (answer None)."""
    if not turns or turns[-1].answer is not None:
        raise ValueError("the last turn must be the open question")
    total = sum(t.images for t in turns)
    if total > MAX_IMAGES:
        raise HuatuoError(f"{total} images in one conversation; HuatuoGPT-Vision takes at most {MAX_IMAGES}")
    parts = []
    for turn in turns:
        human = f"{IMAGE_PLACEHOLDER}\n" * turn.images + moderate(turn.question)
        parts.append(f"{USER_MARKER}\n{human}\n{ASSISTANT_MARKER}\n")
        if turn.answer is not None:
            parts.append(f"{turn.answer} \n")
    return "".join(parts)


@dataclass(frozen=True)
class PromptFormat:
    """A prompt format the runtime can answer in, by the name a manifest gives (`prompt_format`)."""

    name: str
    render: Callable[[list[Turn]], str]  # the prompt text of a conversation whose last turn is open
    max_images: int  # images one conversation may hold
    stop_strings: tuple[str, ...]  # text that ends an answer (the next turn's marker)


#: HuatuoGPT-Vision's own (`cli.py` of the official repository), for both published checkpoints.
DEFAULT_FORMAT = PromptFormat(PROMPT_FORMAT, render, MAX_IMAGES, (USER_MARKER,))
PROMPT_FORMATS = {f.name: f for f in (DEFAULT_FORMAT,)}


def prompt_format(name: str) -> PromptFormat:
    """The format a bundle names, or a HuatuoError saying which this huatuo knows."""
    if name not in PROMPT_FORMATS:
        raise HuatuoError(f"bundle prompt format '{name}' is not supported by this huatuo "
                          f"({', '.join(PROMPT_FORMATS)})", hint="upgrade huatuo-cli or re-convert the bundle")
    return PROMPT_FORMATS[name]


def split_at_images(prompt: str) -> list[str]:
    """Text chunks between image placeholders: N images give N+1 chunks (some may be empty).

    The official code tokenizes each chunk separately, so no token spans an image boundary.
    """
    return prompt.split(IMAGE_PLACEHOLDER)


_USER = re.compile(re.escape(USER_MARKER))
_ASSISTANT = re.compile(re.escape(ASSISTANT_MARKER))


def tokenizer_calls(prompt: str) -> list[str]:
    """The pieces of a rendered prompt that the official code passes to its tokenizer one call each.

    `cli.py` (`preprocess_huatuo`) tokenizes a past turn as two calls, `<|user|>\n{h}\n` and
    `<|assistant|>\n{answer} \n`, and the open turn as one, `<|user|>\n{h}\n<|assistant|>\n`. The
    cuts matter: sentencepiece adds its dummy-prefix space at the start of every call, and no BPE
    token spans two calls. Text without markers is one call.
    """
    cuts = [m.start() for m in _USER.finditer(prompt)]
    cuts += [m.start() for m in _ASSISTANT.finditer(prompt)][:-1]  # the open turn's marker stays in its call
    bounds = sorted({0, *cuts, len(prompt)})
    return [prompt[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [""]


def encode_prompt(prompt: str, encode_text: Callable[[str], list[int]]) -> list[list[int]]:
    """Token ids of each chunk between image placeholders (N images give N+1 chunks), tokenized as
    the official code does: per tokenizer call (`tokenizer_calls`), each call cut at its images and
    every piece tokenized apart by `encode_text` (no BOS). The runtime (`gguf_tokens`) and the
    reference (`huatuo_convert.reference_tokenizer`) both go through here."""
    chunks: list[list[int]] = [[]]
    for call in tokenizer_calls(prompt):
        first, *after_images = split_at_images(call)
        chunks[-1] += encode_text(first)
        chunks += [encode_text(piece) for piece in after_images]
    return chunks
