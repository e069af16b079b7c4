"""The engine behind the batch loop's answer function: one loaded model, one conversation per
question, image embeddings computed once per study and shared by all its questions (questions are
answered independently: a batch answer must not depend on which question came first)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from huatuo_cli.jobs import AnswerFn
from huatuo_cli.record import Answer, answer_from_generation

if TYPE_CHECKING:
    import numpy as np

    from huatuo_cli.bundle import Bundle
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.engine.session import VisionLanguageModel


def model_answerer(model: VisionLanguageModel, sampling: Sampling) -> AnswerFn:
    """answer(images, question) on a `VisionLanguageModel` with `Sampling`."""
    from huatuo_cli.engine.session import Conversation

    seen: list[list[Image.Image]] = []        # the study whose embeddings are cached (identity)
    embeds: list[list[np.ndarray]] = []

    def answer(images: list[Image.Image], question: str) -> Answer:
        if not seen or seen[0] is not images:
            first = Conversation(model, images=images)
            generation = first.ask(question, sampling)
            seen[:], embeds[:] = [images], [first.image_embeds or []]
            return answer_from_generation(generation)
        conversation = Conversation(model, images=images, image_embeds=embeds[0])
        return answer_from_generation(conversation.ask(question, sampling))

    return answer


def load_model(bundle: Bundle | Path, *, device: str = "auto", vision: str = "onnx", n_ctx: int = 4096,
               threads: int | None = None) -> VisionLanguageModel:
    from huatuo_cli.engine.session import VisionLanguageModel as Model

    return Model(bundle, device=device, vision=vision, n_ctx=n_ctx, n_threads=threads)
