"""llama-cpp-python's private attributes, reached only through huatuo_cli/engine/llama_handles.py.

This loads a real (tiny, packaged) GGUF and checks that the handles are what llama.cpp's C API
expects: the context reports the n_ctx the Llama was made with, and the model's vocabulary has
its n_vocab. An upgrade of llama-cpp-python that moves `Llama._ctx.ctx` or `Llama._model.model`
fails here by name.
"""

from __future__ import annotations

from importlib import resources
from types import SimpleNamespace

import pytest

from huatuo_cli.engine import cpu_backend
from huatuo_cli.engine.llama_handles import LlamaInternalsChanged, context_handle, model_handle


def test_handles_of_a_real_model_are_the_c_api_objects() -> None:
    llama_cpp = cpu_backend.llama()
    gguf = resources.files("huatuo_cli") / "data" / "selftest-q8_0.gguf"
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_batch=32, n_threads=1, verbose=False)
    try:
        ctx, model = context_handle(llm), model_handle(llm)
        assert llama_cpp.llama_n_ctx(ctx) == llm.n_ctx() == 256
        vocab = llama_cpp.llama_model_get_vocab(model)
        assert llama_cpp.llama_vocab_n_tokens(vocab) == llm.n_vocab() > 0
    finally:
        llm.close()


def test_a_missing_attribute_is_named() -> None:
    with pytest.raises(LlamaInternalsChanged, match=r"Llama\._ctx\.ctx.*llama_handles\.py"):
        context_handle(SimpleNamespace(_ctx=SimpleNamespace()))
    with pytest.raises(LlamaInternalsChanged, match="NULL"):
        model_handle(SimpleNamespace(_model=SimpleNamespace(model=None)))
