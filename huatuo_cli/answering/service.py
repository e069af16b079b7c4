"""The one answering path: every front end answers through `AnswerService`.

`AnswerService` holds the question rules (`prompt.check_question`), an audit trail proven writable
before the model loads, an audit record after every answer (ok, stopped or failed), and the shared
model and decoding options (`model_options`). `ask` and `tui` answer in a `Conversation` through
`AnswerService.ask`; the batch loop answers through `AnswerService.study_answerer()`: one
conversation per question, image embeddings computed once per study and shared by all its
questions (questions are answered independently: a batch answer must not depend on which question
came first)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from PIL import Image

from huatuo_cli import audit
from huatuo_cli.answering.jobs import AnswerFn
from huatuo_cli.answering.record import Answer, answer_from_generation
from huatuo_cli.engine.prompt import check_question

if TYPE_CHECKING:
    from huatuo_cli.bundles.bundle import Bundle
    from huatuo_cli.engine.llm import ImageSegment, Sampling
    from huatuo_cli.engine.session import Conversation, VisionLanguageModel


def load_model(bundle: Bundle | Path, *, device: str = "auto", vision: str = "onnx", n_ctx: int = 4096,
               threads: int | None = None) -> VisionLanguageModel:
    from huatuo_cli.engine.session import VisionLanguageModel as Model

    return Model(bundle, device=device, vision=vision, n_ctx=n_ctx, n_threads=threads)


class Stopped(Exception):
    """Raised by a front end's streaming callback when the reader stops the answer (the TUI's Escape)."""


Result = TypeVar("Result")


def answer_audited(produce: Callable[[str, Callable[[str], None]], Result], question: str,
                   text_of: Callable[[Result], str], *, command: str, model_sha256: str, study_id: str | None,
                   node: str | None = None, on_text: Callable[[str], None] | None = None) -> Result:
    """The question rules and the audit around one answer, whoever produces it: `produce(question,
    stream)` (the bundle's model in `AnswerService.ask`, or eval's PyTorch reference). Every outcome
    is audited: ok, stopped (`Stopped` from `on_text`: the characters shown) or error; both are raised again."""
    question = check_question(question)
    shown: list[str] = []

    def stream(text: str) -> None:
        if on_text is not None:
            on_text(text)  # may raise Stopped: the text was then not shown
        shown.append(text)

    def record(chars: int, outcome: str) -> None:
        audit.record(command, model_sha256=model_sha256, study_id=study_id, question=question,
                     answer_chars=chars, outcome=outcome, node=node)

    try:
        result = produce(question, stream)
    except Stopped:
        record(len("".join(shown)), "stopped")
        raise
    except Exception:
        record(len("".join(shown)), "error")
        raise
    record(len(text_of(result)), "ok")
    return result


@dataclass
class AnswerService:
    """One loaded model answering for one front end (`command` names it in the audit trail; `node`,
    the Ray node id of a `batch --ray` actor, is audited with every answer given there)."""

    model: VisionLanguageModel
    command: str
    sampling: Sampling
    node: str | None = None

    @classmethod
    def open(cls, bundle: Bundle | Path, *, command: str, sampling: Sampling, device: str = "auto",
             vision: str = "onnx", threads: int | None = None, node: str | None = None) -> AnswerService:
        """Check that the audit trail can be written, then load the model: a front end that cannot
        audit refuses before anything could be answered."""
        audit.ensure_writable()
        return cls(load_model(bundle, device=device, vision=vision, threads=threads), command, sampling, node)

    def ask(self, conversation: Conversation, question: str, *, study_id: str | None,
            on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer `question` in `conversation`, streaming to `on_text`; every outcome is audited.

        `Stopped` raised by `on_text` ends the answer (audited as stopped, with the characters shown)
        and is raised again; so is any failure (audited as an error).
        """
        generation = answer_audited(lambda q, stream: conversation.ask(q, self.sampling, on_text=stream),
                                    question, lambda g: g.text, command=self.command,
                                    model_sha256=self.model.info.model_sha256, study_id=study_id, node=self.node,
                                    on_text=on_text)
        return answer_from_generation(generation)

    def study_answerer(self) -> AnswerFn:
        """The batch loop's answer function: answer(images, question, study_id) through `ask`, in a
        fresh conversation per question, the embeddings of the latest study (by identity) reused."""
        from huatuo_cli.engine.session import Conversation

        seen: list[list[Image.Image]] = []        # the study whose embeddings are cached (identity)
        embeds: list[list[ImageSegment]] = []

        def answer(images: list[Image.Image], question: str, study_id: str | None) -> Answer:
            if seen and seen[0] is images:
                return self.ask(Conversation(self.model, images=images, image_embeds=embeds[0]), question,
                                study_id=study_id)
            first = Conversation(self.model, images=images)
            result = self.ask(first, question, study_id=study_id)
            seen[:], embeds[:] = [images], [first.image_embeds or []]
            return result

        return answer

    def close(self) -> None:
        self.model.close()
