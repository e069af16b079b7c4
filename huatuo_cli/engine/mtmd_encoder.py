"""Image embeddings from an mmproj GGUF through llama.cpp's mtmd (the `--vision mmproj` path).

Not the default: llama.cpp's LLaVA graph in this version puts the CLS token last (llama.cpp
#25814), so its embeddings are far from the reference (README "Vision"). It exists for parity with
llama.cpp tools and Ollama, and to measure that gap. mtmd is given the image after huatuo's own
geometric preprocessing at exactly the tower's size, so mtmd's resize is a copy and only its
normalisation and graph differ.

No text model is needed to encode: `mtmd_init_from_file(path, NULL, ...)` skips the width check
against the LLM, and tokenizing a single image part touches no vocabulary.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huatuo_cli.engine.cpu_backend import llama
from huatuo_cli.engine.preprocess import PreprocessConfig, prepare_image
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require


def _silence(llama_cpp: Any, mtmd: Any) -> None:
    """mtmd and clip log every encode to stderr; their log goes through huatuo's logging instead."""
    from huatuo_cli.logs import route_llama_cpp

    callback = route_llama_cpp(llama_cpp)  # huatuo's logging: quiet unless --verbose
    mtmd.mtmd_log_set(callback, None)
    mtmd.mtmd_helper_log_set(callback, None)


class MtmdImageEncoder:
    """`MtmdImageEncoder(mmproj).encode_prepared([uint8 HxWx3, ...]) -> float32 [N, tokens, n_embd]`."""

    def __init__(self, mmproj_path: Path | str, *, threads: int = 2, use_gpu: bool = False,
                 verbose: bool = False, text_model: Any = None) -> None:
        """`text_model`: a loaded `llama_cpp.Llama` for projectors whose image chunk is wrapped in the
        language model's own marker tokens (Qwen2.5-VL's `<|vision_start|>`...): mtmd tokenizes them with it."""
        llama_cpp = llama()
        self.mtmd = require("llama_cpp.mtmd_cpp")
        llama_cpp.llama_backend_init()
        _silence(llama_cpp, self.mtmd)
        self.path = Path(mmproj_path)
        if not self.path.is_file():
            raise HuatuoError(f"mmproj {self.path.name} not found in {self.path.parent}")
        params = self.mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        from huatuo_cli.engine.llama_handles import model_handle

        self._text_model = text_model  # kept alive as long as the context uses it
        handle = model_handle(text_model) if text_model is not None else None
        self.ctx = self.mtmd.mtmd_init_from_file(str(self.path).encode(), handle, params)
        if not self.ctx:
            raise HuatuoError(f"llama.cpp could not load mmproj {self.path.name} (run with --verbose for its log)")
        if not self.mtmd.mtmd_support_vision(self.ctx):
            self.close()
            raise HuatuoError(f"{self.path.name} has no vision encoder")

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.mtmd.mtmd_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> MtmdImageEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode_one(self, pixels: np.ndarray) -> np.ndarray:
        m = self.mtmd
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        h, w = pixels.shape[:2]
        data = pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        bitmap = m.mtmd_bitmap_init(w, h, data)
        chunks = m.mtmd_input_chunks_init()
        try:
            part = m.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(m.mtmd_input_part) * 1)(ctypes.pointer(part))
            if m.mtmd_tokenize_from_parts(self.ctx, chunks, parts, 1, False) != 0:
                raise HuatuoError("llama.cpp mtmd could not preprocess the image")
            chunk = next(c for c in (m.mtmd_input_chunks_get(chunks, i) for i in range(m.mtmd_input_chunks_size(chunks)))
                         if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE)
            n_tokens = m.mtmd_input_chunk_get_n_tokens(chunk)
            if m.mtmd_encode_chunk(self.ctx, chunk) != 0:
                raise HuatuoError("llama.cpp mtmd failed to encode the image")
            embd = m.mtmd_get_output_embd(self.ctx)
            flat = np.ctypeslib.as_array(embd, shape=(n_tokens * self.n_embd,)).copy()
            return flat.reshape(n_tokens, self.n_embd)
        finally:
            m.mtmd_input_chunks_free(chunks)
            m.mtmd_bitmap_free(bitmap)

    @property
    def n_embd(self) -> int:
        """Width of the projector's output (the LLM's hidden size), from the mmproj's `mm.2.bias`."""
        if not hasattr(self, "_n_embd"):
            reader = require("gguf").GGUFReader(str(self.path))
            bias = next((t for t in reader.tensors if t.name == "mm.2.bias"), None)
            if bias is None:
                raise HuatuoError(f"{self.path.name} has no MLP projector (mm.2.bias)")
            self._n_embd = int(bias.shape[0])
        return self._n_embd

    def encode_prepared(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images already padded, resized and cropped (uint8 HxWx3) -> embeddings."""
        return np.stack([self._encode_one(p) for p in images]).astype(np.float32)

    def encode(self, images: Sequence[Image.Image], config: PreprocessConfig) -> np.ndarray:
        return self.encode_prepared([prepare_image(img, config) for img in images])
