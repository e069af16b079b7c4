"""The language model on llama.cpp, fed with a mix of token ids and precomputed image embeddings.

llama.cpp's own LLaVA vision graph is inexact in the version we ship (docs/llama-cpp.md), so image
embeddings come from ONNX Runtime and enter the LLM here through `llama_batch.embd`. Sampling is
done in numpy on the last logits so that greedy decoding and the official repetition penalty
(HF semantics: divide positive logits, multiply negative ones, over the generated tokens) are the
same arithmetic as the PyTorch reference.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from huatuo_cli.engine import cpu_backend
from huatuo_cli.engine.llama_handles import context_handle, model_handle
from huatuo_cli.engine.prompt import DEFAULT_FORMAT
from huatuo_cli.engine.threads import BusyElsewhere, default_threads, threads_for_now
from huatuo_cli.errors import HuatuoError

#: One prompt segment: token ids (a text chunk) or an image's embeddings [tokens, n_embd].
Segment = Union[list[int], np.ndarray]
#: What a KV-cache position holds: a token id, or (digest of an image, row of its embeddings).
PositionKey = Union[int, tuple[bytes, int]]
#: Text that ends an answer even if the model forgets to emit end-of-generation.
#: How prompt positions are numbered: one per prompt entry, text token or image row, in order.
#: A bundle's manifest names its scheme (`llm.positions`); a scheme not listed here is refused.
POSITION_SCHEMES = ("linear",)


@dataclass(frozen=True)
class Sampling:
    """Decoding options. Greedy by default: draft reports must be reproducible."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.2  # the official HuatuoGPT-Vision CLI's value
    seed: int = 0


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    stopped_by: str  # "eog", "stop-string", "max-tokens"
    encode_s: float = 0.0  # image encoding done for this answer (0 when the embeddings were reused)


def apply_repetition_penalty(logits: np.ndarray, previous: Sequence[int], penalty: float) -> np.ndarray:
    """HF's RepetitionPenaltyLogitsProcessor on one row (the official CLI decodes with 1.2)."""
    if penalty == 1.0 or not previous:
        return logits
    out = logits.copy()
    ids = np.fromiter(set(previous), dtype=np.int64)
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def choose_token(logits: np.ndarray, previous: Sequence[int], sampling: Sampling, rng: np.random.Generator) -> int:
    """Greedy when temperature is 0, else temperature + nucleus sampling (seeded)."""
    logits = apply_repetition_penalty(logits.astype(np.float64), previous, sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, sampling.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


def _position_keys(segments: Sequence[Segment]) -> list[PositionKey]:
    """One comparable key per prompt position: the token id, or (digest of the image, row)."""
    keys: list[PositionKey] = []
    for seg in segments:
        if isinstance(seg, np.ndarray):
            digest = hashlib.blake2b(np.ascontiguousarray(seg, dtype=np.float32).tobytes(), digest_size=16).digest()
            keys.extend((digest, row) for row in range(len(seg)))
        else:
            keys.extend(int(t) for t in seg)
    return keys


def _pending_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (held back)."""
    return max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)


class LlamaEngine:
    """A GGUF language model in llama.cpp with one sequence and our own decode loop."""

    def __init__(
        self,
        gguf_path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int | None = None,
        stop_strings: Sequence[str] = DEFAULT_FORMAT.stop_strings,
    ) -> None:
        #: text that ends an answer: the prompt format's next-turn marker (as a token or spelled out)
        self.stop_strings = tuple(stop_strings)
        llama_cpp = cpu_backend.llama()
        self._lib = llama_cpp
        self.cpu_kernels = cpu_backend.describe()
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        layers = (-1 if self.gpu_offload else 0) if n_gpu_layers is None else n_gpu_layers
        #: None: follow the idle physical cores before each answer (`threads`); else fixed (--threads)
        self._busy = None if n_threads else BusyElsewhere()
        threads = n_threads or default_threads()
        self.threads = threads
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(gguf_path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=layers,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise HuatuoError(f"llama.cpp could not load {Path(gguf_path).name}: {exc}") from exc
        self.n_gpu_layers = layers
        self.n_ctx = self.llm.n_ctx()
        self.n_embd = self.llm.n_embd()
        self.n_vocab = self.llm.n_vocab()
        self.n_batch = n_batch
        self._ctx = context_handle(self.llm)
        self._vocab = llama_cpp.llama_model_get_vocab(model_handle(self.llm))
        #: what each KV-cache position holds (token id, or (image digest, row)), for prefix reuse
        self._cached: list[PositionKey] = []
        self.last_prefill_reused = 0

    # -- text ------------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[list[int]]:
        """Token ids of each text chunk between `<image>` markers, exactly as the converter's
        parity check tokenized them (`huatuo_cli.engine.gguf_tokens`)."""
        from huatuo_cli.engine.gguf_tokens import encode_chunks

        return encode_chunks(self.llm, prompt)

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's bytes; control tokens render as nothing unless `special`.

        llama-cpp-python's own `token_to_piece` returns its whole 32-byte buffer, NULs included.
        """
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    # -- decoding ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        mem = self._lib.llama_get_memory(self._ctx)
        self._lib.llama_memory_clear(mem, True)
        self._cached = []

    def _decode_batch(self, n: int, start: int, want_last: bool, *, tokens: Sequence[int] | None = None,
                      embeds: np.ndarray | None = None) -> None:
        """One llama_decode of n positions from `start`: token ids, or embedding rows [n, n_embd]."""
        lib = self._lib
        batch = lib.llama_batch_init(n, 0 if embeds is None else self.n_embd, 1)
        try:
            batch.n_tokens = n
            if embeds is not None:
                ctypes.memmove(batch.embd, embeds.ctypes.data, embeds.nbytes)
            for i in range(n):
                if tokens is not None:
                    batch.token[i] = tokens[i]
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            if want_last:
                batch.logits[n - 1] = 1
            self._check(lib.llama_decode(self._ctx, batch))
        finally:
            lib.llama_batch_free(batch)

    def _decode_tokens(self, ids: Sequence[int], start: int, want_last: bool) -> None:
        for off in range(0, len(ids), self.n_batch):
            part = ids[off : off + self.n_batch]
            self._decode_batch(len(part), start + off, want_last and off + len(part) == len(ids), tokens=part)

    def _decode_embeddings(self, embeds: np.ndarray, start: int, want_last: bool) -> None:
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise HuatuoError(f"image embeddings have width {embeds.shape[-1]}, the language model expects {self.n_embd}",
                              hint="the bundle's vision and LLM files do not belong together")
        for off in range(0, len(embeds), self.n_batch):
            part = np.ascontiguousarray(embeds[off : off + self.n_batch])
            self._decode_batch(len(part), start + off, want_last and off + len(part) == len(embeds), embeds=part)

    @staticmethod
    def _check(code: int) -> None:
        if code == 1:
            raise HuatuoError("the conversation does not fit in the model's context window")
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")

    def _last_logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _fit_threads(self) -> None:
        """Give llama.cpp the physical cores nothing else is keeping busy right now (huatuo_cli.engine.threads)."""
        if self._busy is None:
            return
        threads = threads_for_now(self._busy.cores())
        if threads != self.threads:
            self._lib.llama_set_n_threads(self._ctx, threads, threads)
            self.threads = threads

    def prompt_length(self, segments: Sequence[Segment]) -> int:
        return sum(len(s) for s in segments)

    def prefill(self, segments: Sequence[Segment]) -> np.ndarray:
        """Feed the prompt and return the logits after its last position.

        Positions already in the KV cache from the previous call (the same study's image before a
        second question, or the whole history before a follow-up) are kept and not computed again:
        only the part after the longest common prefix is decoded.
        """
        keys = _position_keys(segments)
        if not keys:
            raise ValueError("empty prompt")
        self._fit_threads()
        keep = 0
        for a, b in zip(self._cached, keys, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(keys) - 1)  # the last position is always decoded: its logits are needed
        mem = self._lib.llama_get_memory(self._ctx)
        if keep == 0 or not self._lib.llama_memory_seq_rm(mem, 0, keep, -1):
            self._clear()
            keep = 0
        self._cached = keys[:keep]
        pos = 0
        for seg in segments:
            n = len(seg)
            if pos + n > keep:
                skip = max(0, keep - pos)
                last = pos + n == len(keys)
                if isinstance(seg, np.ndarray):
                    self._decode_embeddings(seg[skip:], pos + skip, last)
                else:
                    self._decode_tokens(list(seg)[skip:], pos + skip, last)
            pos += n
        self._cached = keys
        self.last_prefill_reused = keep
        return self._last_logits()

    def generate(
        self,
        segments: Sequence[Segment],
        sampling: Sampling = Sampling(),
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Prefill the prompt and decode; `on_text` receives the answer as it streams."""
        segments = [s for s in segments if len(s)]  # empty text chunks carry nothing
        n_prompt = self.prompt_length(segments)
        if n_prompt + sampling.max_tokens > self.n_ctx:
            raise HuatuoError(
                f"the prompt needs {n_prompt} positions plus up to {sampling.max_tokens} answer tokens, "
                f"but the context window is {self.n_ctx}",
                hint="ask with fewer images or a shorter history, or lower --max-tokens",
            )
        rng = np.random.default_rng(sampling.seed)
        t0 = time.perf_counter()
        logits = self.prefill(segments)
        t1 = time.perf_counter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens: list[int] = []
        text = ""
        emitted = 0  # characters of `text` already streamed
        stopped_by = "max-tokens"
        pos = n_prompt
        for _ in range(sampling.max_tokens):
            tok = choose_token(logits, tokens, sampling, rng)
            if self.is_end(tok) or self.piece(tok, special=True).decode("utf-8", "replace") in self.stop_strings:
                stopped_by = "eog" if self.is_end(tok) else "stop-string"
                break
            tokens.append(tok)
            text += decoder.decode(self.piece(tok))
            stop = next((s for s in self.stop_strings if s in text), None)
            if stop:  # the marker spelled out in plain tokens
                text = text[: text.index(stop)]
                stopped_by = "stop-string"
                break
            safe = len(text) - _pending_stop_prefix(text, self.stop_strings)
            if on_text and safe > emitted:
                on_text(text[emitted:safe])
                emitted = safe
            self._decode_tokens([tok], pos, True)
            self._cached.append(tok)
            pos += 1
            logits = self._last_logits()
        if on_text and len(text) > emitted:
            on_text(text[emitted:])
        t2 = time.perf_counter()
        return Generation(text=text.strip(), tokens=tokens, prompt_tokens=n_prompt,
                          prefill_s=t1 - t0, decode_s=t2 - t1, stopped_by=stopped_by)

    def close(self) -> None:
        self.llm.close()
