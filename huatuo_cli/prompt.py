"""HuatuoGPT-Vision's prompt format, shared by the runtime and the PyTorch reference.

One definition, so that what the workstation sends to llama.cpp is exactly what the fidelity
checks were measured on (docs/model.md): per past turn `<|user|>\\n{h}\\n<|assistant|>\\n{answer} \\n`,
the open turn ends with `<|user|>\\n{h}\\n<|assistant|>\\n`, images prepended as `<image>\\n`.
"""

from __future__ import annotations

from dataclasses import dataclass

from huatuo_cli.errors import HuatuoError

IMAGE_PLACEHOLDER = "<image>"
#: The official CLI accepts at most this many images in one conversation.
MAX_IMAGES = 6
#: Markers users may not inject (input moderation of the official code).
_STRIPPED = (IMAGE_PLACEHOLDER, "<s>", "</s>")
USER_MARKER = "<|user|>"
ASSISTANT_MARKER = "<|assistant|>"
PROMPT_FORMAT = "huatuo-v1"


def moderate(text: str) -> str:
    """Remove the markers a user could use to forge images or turn boundaries."""
    for token in _STRIPPED:
        text = text.replace(token, "")
    return text.strip()


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


def split_at_images(prompt: str) -> list[str]:
    """Text chunks between image placeholders: N images give N+1 chunks (some may be empty).

    The official code tokenizes each chunk separately, so no token spans an image boundary.
    """
    return prompt.split(IMAGE_PLACEHOLDER)
