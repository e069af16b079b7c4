"""The engine behind the batch loop's answer function: one loaded model, one conversation per
question, image embeddings computed once per study and shared by all its questions (questions are
answered independently: a batch answer must not depend on which question came first)."""

from __future__ import annotations

from typing import Any

from huatuo_cli.jobs import AnswerFn
from huatuo_cli.record import Answer, answer_from_generation


def model_answerer(model: Any, sampling: Any) -> AnswerFn:
    """answer(images, question) on a `VisionLanguageModel` with `Sampling`."""
    from huatuo_cli.engine.session import Conversation

    cache: dict[str, Any] = {"images": None, "embeds": None}

    def answer(images: list, question: str) -> Answer:
        if cache["images"] is not images:
            first = Conversation(model, images=images)
            generation = first.ask(question, sampling)
            cache.update(images=images, embeds=first.image_embeds)
            return answer_from_generation(generation)
        conversation = Conversation(model, images=images, image_embeds=cache["embeds"])
        return answer_from_generation(conversation.ask(question, sampling))

    return answer


def load_model(bundle: Any, *, device: str = "auto", vision: str = "onnx", n_ctx: int = 4096,
               threads: int | None = None) -> Any:
    from huatuo_cli.engine.session import VisionLanguageModel

    return VisionLanguageModel(bundle, device=device, vision=vision, n_ctx=n_ctx, n_threads=threads)
