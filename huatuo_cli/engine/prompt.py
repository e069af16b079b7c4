"""The prompt formats of HuatuoGPT-Vision's checkpoints, shared by the runtime and the PyTorch reference.

A bundle's manifest names its prompt format; `prompt_format` turns the name into what the runtime
renders, tokenizes and stops on, and refuses a name this huatuo does not know. One definition, so
that what the workstation sends to llama.cpp is exactly what the fidelity checks were measured on
(docs/model.md):

- `huatuo-v1` (the LLaVA checkpoints, the official `cli.py`): per past turn
  `<|user|>\\n{h}\\n<|assistant|>\\n{answer} \\n`, the open turn ends with
  `<|user|>\\n{h}\\n<|assistant|>\\n`, images prepended as `<image>\\n`;
- `qwen2-vl-chatml` (HuatuoGPT-Vision-7B-Qwen2.5VL, Qwen2.5-VL-Instruct's chat template): a system
  turn, then `<|im_start|>user\\n{images}{h}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n`,
  each image `<|vision_start|><|image_pad|><|vision_end|>`, where the image's embeddings take the
  place of `<|image_pad|>` (one position per merged patch).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from huatuo_cli.errors import HuatuoError

IMAGE_PLACEHOLDER = "<image>"
#: The official CLI accepts at most this many images in one conversation.
MAX_IMAGES = 6
USER_MARKER = "<|user|>"
ASSISTANT_MARKER = "<|assistant|>"
#: The template's own markers: the only prompt text tokenized as control tokens (`gguf_tokens`);
#: everything else, above all the user's text, is plain text whatever it looks like.
TEMPLATE_MARKERS = (USER_MARKER, ASSISTANT_MARKER)
PROMPT_FORMAT = "huatuo-v1"
#: Qwen2-VL's ChatML markers: special tokens of every Qwen2-VL / Qwen2.5-VL vocabulary
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
CHATML_MARKERS = (IM_START, IM_END, VISION_START, VISION_END)
#: the system turn Qwen2.5-VL-Instruct's chat template adds when a conversation has none
QWEN_SYSTEM_PROMPT = "You are a helpful assistant."
QWEN_FORMAT = "qwen2-vl-chatml"
#: Markers users may not inject: the official code's input moderation, plus every format's turn and
#: image markers (a question containing `<|assistant|>` or `<|im_start|>` must not open a forged turn).
_STRIPPED = (IMAGE_PLACEHOLDER, "<s>", "</s>", *TEMPLATE_MARKERS, IMAGE_PAD, "<|video_pad|>", "<|vision_pad|>",
             *CHATML_MARKERS, "<|endoftext|>")


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


def render_chatml(turns: list[Turn]) -> str:
    """Qwen2.5-VL-Instruct's chat template for a conversation whose last turn is open: its default
    system turn, each user turn's images before its text, the generation prompt at the end. The
    converter checks this against the checkpoint's own template (`apply_chat_template`)."""
    if not turns or turns[-1].answer is not None:
        raise ValueError("the last turn must be the open question")
    total = sum(t.images for t in turns)
    if total > MAX_IMAGES:
        raise HuatuoError(f"{total} images in one conversation; huatuo takes at most {MAX_IMAGES}")
    parts = [f"{IM_START}system\n{QWEN_SYSTEM_PROMPT}{IM_END}\n"]
    for turn in turns:
        images = f"{VISION_START}{IMAGE_PAD}{VISION_END}" * turn.images
        parts.append(f"{IM_START}user\n{images}{moderate(turn.question)}{IM_END}\n{IM_START}assistant\n")
        if turn.answer is not None:
            parts.append(f"{turn.answer}{IM_END}\n")
    return "".join(parts)


def one_call(prompt: str) -> list[str]:
    """The whole prompt as one tokenizer call (transformers' processors tokenize the rendered chat at once)."""
    return [prompt]


@dataclass(frozen=True)
class PromptFormat:
    """A prompt format the runtime can answer in, by the name a manifest gives (`prompt_format`)."""

    name: str
    render: Callable[[list[Turn]], str]  # the prompt text of a conversation whose last turn is open
    max_images: int  # images one conversation may hold
    stop_strings: tuple[str, ...]  # text that ends an answer (the next turn's marker)
    #: where an image's embeddings go in the rendered text
    image_placeholder: str = IMAGE_PLACEHOLDER
    #: the template's own markers: the only prompt text tokenized as control tokens (`gguf_tokens`)
    template_markers: tuple[str, ...] = TEMPLATE_MARKERS
    #: the pieces of a rendered prompt the checkpoint's own code tokenizes one call each
    tokenizer_calls: Callable[[str], list[str]] = field(default=lambda prompt: tokenizer_calls(prompt))
    #: whether the markers may be plain text of the vocabulary (`huatuo.tokenizer.markers`); ChatML's never are
    markers_may_be_text: bool = True

    def encode(self, prompt: str, encode_text: Callable[[str], list[int]]) -> list[list[int]]:
        """Token ids of each chunk between image placeholders (N images give N+1 chunks): per
        tokenizer call, each call cut at its images and every piece tokenized apart by `encode_text`
        (no BOS). The runtime (`gguf_tokens`) and the reference (`huatuo_convert.reference_tokenizer`)
        both go through here."""
        chunks: list[list[int]] = [[]]
        for call in self.tokenizer_calls(prompt):
            first, *after_images = call.split(self.image_placeholder)
            chunks[-1] += encode_text(first)
            chunks += [encode_text(piece) for piece in after_images]
        return chunks


#: HuatuoGPT-Vision's own (`cli.py` of the official repository), for both LLaVA checkpoints.
DEFAULT_FORMAT = PromptFormat(PROMPT_FORMAT, render, MAX_IMAGES, (USER_MARKER,))
#: HuatuoGPT-Vision-7B-Qwen2.5VL's (the processor's chat template, as `train_vl.py` trained it).
CHATML_FORMAT = PromptFormat(QWEN_FORMAT, render_chatml, MAX_IMAGES, (IM_END,), image_placeholder=IMAGE_PAD,
                             template_markers=CHATML_MARKERS, tokenizer_calls=one_call, markers_may_be_text=False)
PROMPT_FORMATS = {f.name: f for f in (DEFAULT_FORMAT, CHATML_FORMAT)}


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
    """`huatuo-v1`'s `PromptFormat.encode`: per tokenizer call (`tokenizer_calls`), cut at `<image>`."""
    return DEFAULT_FORMAT.encode(prompt, encode_text)
