"""The versioned result of one question about one study, shared by `ask --json` and `batch`.

A record names the study only by its PHI-free key and the inputs only by content hashes, so
results can be shared for quality review without de-identification. `schema` changes when a
field changes meaning; readers check it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from huatuo_cli.privacy import NOTICE

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Generation
    from huatuo_cli.engine.session import ModelInfo


SCHEMA = "huatuo.result/2"  # 2: model.model_id renamed model.model_sha256 (it always held that)
#: schemas a reader accepts; `upgrade` turns older records into the current one
READABLE_SCHEMAS = ("huatuo.result/1", SCHEMA)


@dataclass
class Answer:
    """What an answer function returns: the boundary between the batch loop and the engine."""

    text: str
    tokens: int = 0
    prompt_tokens: int = 0
    stopped_by: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # encode_s, prefill_s, decode_s

    @property
    def tokens_per_s(self) -> float:
        decode = self.timings.get("decode_s", 0.0)
        return self.tokens / decode if decode > 0 else 0.0


def answer_from_generation(generation: Generation) -> Answer:
    """An engine `Generation` (huatuo_cli.engine.llm) as an Answer."""
    return Answer(
        text=generation.text,
        tokens=len(generation.tokens),
        prompt_tokens=generation.prompt_tokens,
        stopped_by=generation.stopped_by,
        timings={"encode_s": generation.encode_s, "prefill_s": generation.prefill_s, "decode_s": generation.decode_s},
    )


def model_dict(info: ModelInfo | Mapping[str, Any] | None) -> dict[str, Any]:
    """ModelInfo (a dataclass) or a plain mapping, as JSON-ready dict."""
    if info is None:
        return {}
    if isinstance(info, Mapping):
        return dict(info)
    return asdict(info)


def build_record(
    *,
    study: str,
    question: str,
    answer: Answer,
    model: ModelInfo | Mapping[str, Any] | None,
    inputs: list[str],
    window: str | None,
    series: str | None = None,
    total_s: float | None = None,
) -> dict[str, Any]:
    """One result record (JSON-ready). `study`/`series` are PHI-free keys, `inputs` content hashes."""
    info = model_dict(model)
    timings = {k: round(v, 4) for k, v in answer.timings.items()}
    if total_s is not None:
        timings["total_s"] = round(total_s, 4)
    return {
        "schema": SCHEMA,
        "study": study,
        "series": series,
        "question": question,
        "answer": answer.text,
        "model": {k: info.get(k) for k in ("model_sha256", "bundle", "architecture", "quantization")} if info else {},
        "provider": {"vision": info.get("vision_provider"), "vision_note": info.get("vision_note"),
                     "llm_gpu_offload": info.get("llm_gpu_offload"), "llm_cpu": info.get("llm_cpu")} if info else {},
        "inputs": [{"sha256": h} for h in inputs],
        "window": window,
        "tokens": answer.tokens,
        "prompt_tokens": answer.prompt_tokens,
        "stopped_by": answer.stopped_by,
        "timings": timings,
        "tokens_per_s": round(answer.tokens_per_s, 3),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "notice": NOTICE,
    }


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A result record of any readable schema as the current one (huatuo.result/1 called the
    manifest sha256 `model_id`). Unknown schemas are returned unchanged for the caller to refuse."""
    if record.get("schema") == "huatuo.result/1":
        model = dict(record.get("model") or {})
        if "model_id" in model:
            model["model_sha256"] = model.pop("model_id")
        record = {**record, "schema": SCHEMA, "model": model}
    return record
