"""The one place that reaches into llama-cpp-python's private attributes.

The engine feeds image embeddings through `llama_batch.embd` and samples in numpy, which needs
the raw `llama_context *` and `llama_model *` behind a high-level `Llama`. llama-cpp-python keeps
them in private attributes (`Llama._ctx.ctx`, `Llama._model.model`, as of 0.3.36) with no public
accessor, so an upgrade may move them. Everything else uses these two functions, and
tests/test_llama_handles.py loads a real model through them: an upgrade that renames the
attributes fails that test (and this error) by name instead of crashing somewhere in decoding.
"""

from __future__ import annotations

from typing import Any


class LlamaInternalsChanged(RuntimeError):
    """llama-cpp-python no longer has the private attribute huatuo relies on (a bug to fix here)."""


def _reach(llm: Any, owner: str, attr: str) -> Any:
    try:
        handle = getattr(getattr(llm, owner), attr)
    except AttributeError as exc:
        raise LlamaInternalsChanged(
            f"llama-cpp-python no longer has Llama.{owner}.{attr}; update huatuo_cli/engine/llama_handles.py "
            "for the installed version") from exc
    if not handle:
        raise LlamaInternalsChanged(f"Llama.{owner}.{attr} is NULL (model freed or not loaded)")
    return handle


def context_handle(llm: Any) -> Any:
    """The `llama_context *` of a loaded `llama_cpp.Llama`."""
    return _reach(llm, "_ctx", "ctx")


def model_handle(llm: Any) -> Any:
    """The `llama_model *` of a loaded `llama_cpp.Llama`."""
    return _reach(llm, "_model", "model")
