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
from typing import Union, cast

import numpy as np

from huatuo_cli.engine import cpu_backend
from huatuo_cli.engine.llama_handles import context_handle, model_handle
from huatuo_cli.engine.prompt import DEFAULT_FORMAT
from huatuo_cli.engine.threads import BusyElsewhere, default_threads, threads_for_now
from huatuo_cli.errors import HuatuoError


@dataclass(frozen=True, eq=False)
class ImageEmbeds:
    """An image's embeddings with the grid they cover: `rows` [grid rows x grid cols, n_embd] in raster
    order. Multimodal rotary positions (M-RoPE) need the grid; the linear scheme takes plain arrays too."""

    rows: np.ndarray
    grid: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rows)


#: An image's embeddings [tokens, n_embd], with its grid where the position scheme needs it.
ImageSegment = Union[np.ndarray, ImageEmbeds]
#: One prompt segment: token ids (a text chunk) or an image's embeddings.
Segment = Union[list[int], np.ndarray, ImageEmbeds]
#: What a KV-cache position holds: a token id, or (digest of an image, row of its embeddings).
PositionKey = Union[int, tuple[bytes, int]]
#: How prompt positions are numbered. A bundle's manifest names its scheme (`llm.positions`); a
#: scheme not listed here is refused.
#: - "linear": one position per prompt entry, text token or image row, in order (LLaVA);
#: - "mrope": Qwen2-VL's (transformers' `get_rope_index`): a text token at p has (p, p, p); an image
#:   starting at s has (s, s + row, s + col) for each merged patch, and the text after it starts at
#:   the image's largest position + 1. llama.cpp takes four sections per embedding row (time, row,
#:   column, unused 0) and broadcasts a token's one position to all of them.
POSITION_SCHEMES = ("linear", "mrope")


def _image_rows(seg: Segment) -> np.ndarray | None:
    """The embeddings of an image segment, None for a text chunk."""
    if isinstance(seg, ImageEmbeds):
        return seg.rows
    return seg if isinstance(seg, np.ndarray) else None


def prompt_positions(segments: Sequence[Segment], scheme: str) -> np.ndarray:
    """int32 [entries, 4]: the (time, row, column, 0) position of every prompt entry under `scheme`
    (the linear scheme repeats its one position)."""
    out: list[np.ndarray] = []
    start = 0
    for seg in segments:
        n = len(seg)
        if scheme == "mrope" and _image_rows(seg) is not None:
            if not isinstance(seg, ImageEmbeds) or seg.grid[0] * seg.grid[1] != n:
                raise ValueError("M-RoPE needs each image's grid (ImageEmbeds) covering its rows")
            rows, cols = seg.grid
            r, c = np.divmod(np.arange(n), cols)
            block = np.stack([np.full(n, start), start + r, start + c, np.zeros(n, dtype=np.int64)], axis=1)
            start += max(rows, cols)
        else:
            p = start + np.arange(n)
            block = np.stack([p, p, p, p if scheme == "linear" else np.zeros(n, dtype=np.int64)], axis=1)
            start += n
        out.append(block)
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0, 4), dtype=np.int32)


def next_position(positions: np.ndarray) -> int:
    """Where the first answer token goes: one past the prompt's largest position."""
    return int(positions[:, :3].max()) + 1 if len(positions) else 0


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
        rows = _image_rows(seg)
        if rows is not None:
            digest = hashlib.blake2b(np.ascontiguousarray(rows, dtype=np.float32).tobytes(), digest_size=16).digest()
            keys.extend((digest, row) for row in range(len(rows)))
        else:
            keys.extend(int(t) for t in cast(list[int], seg))
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
        positions: str = POSITION_SCHEMES[0],
    ) -> None:
        #: text that ends an answer: the prompt format's next-turn marker (as a token or spelled out)
        self.stop_strings = tuple(stop_strings)
        if positions not in POSITION_SCHEMES:
            raise HuatuoError(f"position scheme '{positions}' is not supported by this huatuo")
        #: how prompt positions are numbered (the bundle's `llm.positions`)
        self.positions = positions
        llama_cpp = cpu_backend.llama()
        self._lib = llama_cpp
        self.cpu_kernels = cpu_backend.describe()
        supported = bool(llama_cpp.llama_supports_gpu_offload())
        layers = (-1 if supported else 0) if n_gpu_layers is None else n_gpu_layers
        #: layers on a GPU: all where the build has a GPU backend that found one, none with --device cpu
        self.gpu_offload = supported and layers != 0
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
        self._next_pos = 0  # the position after the last prompt entry decoded (M-RoPE: not the entry count)
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

    def _decode_batch(self, positions: np.ndarray, want_last: bool, *, tokens: Sequence[int] | None = None,
                      embeds: np.ndarray | None = None) -> None:
        """One llama_decode of n entries at `positions` [n, 4]: token ids, or embedding rows [n, n_embd].

        A token has one position (llama.cpp gives it to every M-RoPE section); an embedding row of an
        M-RoPE model has four, section-major (`pos[j * n + i]`), in an array of our own: llama_batch_init
        allocates one per row.
        """
        lib = self._lib
        n = len(positions)
        batch = lib.llama_batch_init(n, 0 if embeds is None else self.n_embd, 1)
        pos_type = type(batch.pos)
        allocated_pos = ctypes.cast(batch.pos, ctypes.c_void_p).value or 0  # the address: a field read aliases the field
        try:
            batch.n_tokens = n
            if embeds is not None:
                ctypes.memmove(batch.embd, embeds.ctypes.data, embeds.nbytes)
                if self.positions == "mrope":
                    sections = np.ascontiguousarray(positions.T, dtype=np.int32)  # [4, n]: section-major
                    own = (ctypes.c_int32 * sections.size).from_buffer_copy(sections.tobytes())
                    batch.pos = ctypes.cast(own, pos_type)
            for i in range(n):
                if tokens is not None:
                    batch.token[i] = tokens[i]
                if embeds is None or self.positions != "mrope":
                    batch.pos[i] = int(positions[i, 0])
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            if want_last:
                batch.logits[n - 1] = 1
            self._check(lib.llama_decode(self._ctx, batch))
        finally:
            batch.pos = ctypes.cast(allocated_pos, pos_type)  # llama_batch_free frees what llama_batch_init allocated
            lib.llama_batch_free(batch)

    def _decode_tokens(self, ids: Sequence[int], positions: np.ndarray, want_last: bool) -> None:
        for off in range(0, len(ids), self.n_batch):
            part = ids[off : off + self.n_batch]
            self._decode_batch(positions[off : off + len(part)], want_last and off + len(part) == len(ids), tokens=part)

    def _decode_embeddings(self, embeds: np.ndarray, positions: np.ndarray, want_last: bool) -> None:
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise HuatuoError(f"image embeddings have width {embeds.shape[-1]}, the language model expects {self.n_embd}",
                              hint="the bundle's vision and LLM files do not belong together")
        for off in range(0, len(embeds), self.n_batch):
            part = np.ascontiguousarray(embeds[off : off + self.n_batch])
            self._decode_batch(positions[off : off + len(part)], want_last and off + len(part) == len(embeds),
                               embeds=part)

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
        positions = prompt_positions(segments, self.positions)
        self._fit_threads()
        keep = 0
        for a, b in zip(self._cached, keys, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(keys) - 1)  # the last position is always decoded: its logits are needed
        keep = self._segment_aligned(segments, keep)
        mem = self._lib.llama_get_memory(self._ctx)
        if keep == 0 or not self._lib.llama_memory_seq_rm(mem, 0, int(positions[keep, 0]), -1):
            self._clear()
            keep = 0
        self._cached = keys[:keep]
        pos = 0
        for seg in segments:
            n = len(seg)
            if pos + n > keep:
                skip = max(0, keep - pos)
                last = pos + n == len(keys)
                rows = _image_rows(seg)
                if rows is not None:
                    self._decode_embeddings(rows[skip:], positions[pos + skip : pos + n], last)
                else:
                    self._decode_tokens(cast(list[int], seg)[skip:], positions[pos + skip : pos + n], last)
            pos += n
        self._cached = keys
        self._next_pos = next_position(positions)
        self.last_prefill_reused = keep
        return self._last_logits()

    def _segment_aligned(self, segments: Sequence[Segment], keep: int) -> int:
        """Under M-RoPE an image's rows share one cache position (its time section), so the cache can
        only be cut before an image, never inside one: `keep` moved back to the image's first row."""
        if self.positions != "mrope":
            return keep
        pos = 0
        for seg in segments:
            if pos < keep < pos + len(seg) and _image_rows(seg) is not None:
                return pos
            pos += len(seg)
        return keep

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
        pos = self._next_pos
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
            self._decode_tokens([tok], np.full((1, 4), pos, dtype=np.int32), True)
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
