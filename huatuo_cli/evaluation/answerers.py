"""Who answers the items: a bundle through `AnswerService` (command "eval": question rules, audit
trail, one audit record per answer), or the PyTorch reference of a checkpoint (`--reference`, the
`convert` extra; imported only then). Images are read as `ask` reads them (`answering.inputs`):
pictures, DICOM files and series folders, with the item's window or the command's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huatuo_cli.answering.inputs import inputs_from_paths
from huatuo_cli.answering.service import answer_audited
from huatuo_cli.evaluation.data import Item

if TYPE_CHECKING:
    from PIL import Image

    from huatuo_cli.answering.service import AnswerService
    from huatuo_cli.engine.llm import Sampling


def _images(item: Item, window: Any, images: int) -> list[Image.Image]:
    if not item.images:
        return []
    return inputs_from_paths(item.images, window=item.window or window, images=images)[2].images


def bundle_answerer(service: AnswerService, *, window: Any = "auto", images: int = 6) -> Callable[[Item], str]:
    from huatuo_cli.engine.session import Conversation

    def answer(item: Item) -> str:
        conversation = Conversation(service.model, images=_images(item, window, images))
        return service.ask(conversation, item.prompt, study_id=f"eval:{item.dataset}:{item.id}").text

    return answer


def reference_answerer(checkpoint: Path, bundle: Path, sampling: Sampling, *, window: Any = "auto",
                       images: int = 6) -> tuple[Callable[[Item], str], dict[str, str], Callable[[], None]]:
    """The PyTorch reference (greedy; the bundle's preprocessing) -> (answer, model, close)."""
    from huatuo_cli.errors import HuatuoError
    from huatuo_cli.extras import require

    if sampling.temperature > 0:
        raise HuatuoError("--reference decodes greedily only", hint="leave --temperature at 0 (and --sampling greedy)")
    reference = require("huatuo_convert.reference")
    from huatuo_cli.engine.encoder import PREPROCESSOR_NAME
    from huatuo_cli.engine.preprocess import PreprocessConfig

    ref = reference.load_reference(checkpoint)  # LLaVA's oracle, or transformers' own Qwen2.5-VL
    fixed = ref.ckpt.family.vision.fixed_size  # LLaVA: the bundle's preprocessing; Qwen: transformers' processor
    config = PreprocessConfig.from_file(Path(bundle) / "vision" / PREPROCESSOR_NAME) if fixed else None
    model = {"name": f"reference:{Path(checkpoint).name}", "sha256": f"reference:{ref.ckpt.config_sha256}"}

    def produce(question: str, pictures: list[Image.Image]) -> str:
        text: str = ref.answer(question, pictures, sampling.max_tokens, repetition_penalty=sampling.repetition_penalty,
                               preprocess_config=config).text
        return text

    def answer(item: Item) -> str:
        pictures = _images(item, window, images)
        return answer_audited(lambda question, _stream: produce(question, pictures), item.prompt, lambda text: text,
                              command="eval", model_sha256=model["sha256"], study_id=f"eval:{item.dataset}:{item.id}")

    return answer, model, lambda: None
