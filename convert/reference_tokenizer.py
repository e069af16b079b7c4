"""The tokenizer behaviour the official HuatuoGPT-Vision code had, as the parity reference.

A byte-level BPE (the 7B): the checkpoint's own tokenizer through transformers (`tokenizer.json`, or
the `vocab.json` + `merges.txt` pair that transformers builds the same fast tokenizer from).
A sentencepiece `LlamaTokenizer` (the 34B): the official code ran transformers 4.x's slow one (legacy mode),
which is sentencepiece itself on each text; transformers 5 converts `tokenizer.model` to a fast
tokenizer that differs on whitespace runs, so sentencepiece is used directly here.

Prompts are tokenized as HuatuoGPT-Vision's `cli.py` does (docs/model.md "Tokenization"): one
tokenizer call per turn part, cut at `<image>`, each piece whole with
`tokenizer(chunk, add_special_tokens=False)`, so no BOS anywhere (the official code changed LLaVA's
`tokenizer_image_token`, which put BOS on the first chunk).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huatuo_cli.engine.gguf_tokens import MARKERS_AS_TEXT, MARKERS_AS_TOKENS
from huatuo_cli.engine.prompt import DEFAULT_FORMAT, PromptFormat
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require


@dataclass
class ReferenceTokenizer:
    encode_text: Callable[[str], list[int]]  # no special prefix tokens
    decode: Callable[[list[int]], str]
    bos_id: int | None
    eos_id: int | None
    vocab_size: int
    #: `tokens` or `text`: whether the template's markers are added tokens of this tokenizer
    markers: str
    #: the prompt format whose chunks `encode_chunks` makes (the checkpoint family's)
    fmt: PromptFormat = DEFAULT_FORMAT

    def encode_chunks(self, prompt: str) -> list[list[int]]:
        """Token ids of each text chunk between image placeholders, as the checkpoint's own code makes them."""
        return self.fmt.encode(prompt, self.encode_text)


def marker_style(is_token: Callable[[str], bool], fmt: PromptFormat = DEFAULT_FORMAT) -> str:
    """`tokens` when every template marker is one added token, `text` when none is; a tokenizer that
    defines only some of them is refused (no published checkpoint does, and neither answer is safe),
    and so is one without them where the format's markers are always tokens (ChatML)."""
    found = {marker: is_token(marker) for marker in fmt.template_markers}
    if all(found.values()):
        return MARKERS_AS_TOKENS
    if not fmt.markers_may_be_text:
        missing = ", ".join(m for m, ok in found.items() if not ok)
        raise HuatuoError(f"the tokenizer lacks the {fmt.name} marker token(s) {missing}",
                          hint="use the checkpoint's own tokenizer files (tokenizer.json, tokenizer_config.json)")
    if not any(found.values()):
        return MARKERS_AS_TEXT
    defined = ", ".join(m for m, ok in found.items() if ok)
    missing = ", ".join(m for m, ok in found.items() if not ok)
    raise HuatuoError(f"the tokenizer defines the chat marker(s) {defined} as tokens but not {missing}",
                      hint="a HuatuoGPT-Vision tokenizer defines both markers as added tokens or neither")


def load_reference_tokenizer(root: Path, fmt: PromptFormat = DEFAULT_FORMAT) -> ReferenceTokenizer:
    """The checkpoint's own tokenizer, cutting prompts as `fmt` says its code does."""
    root = Path(root)
    cfg_path = root / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if (root / "tokenizer.model").is_file() and cfg.get("tokenizer_class", "").startswith("Llama"):
        spm = require("sentencepiece")
        sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))

        from sentencepiece import sentencepiece_model_pb2 as model_pb2

        proto = model_pb2.ModelProto()
        proto.ParseFromString((root / "tokenizer.model").read_bytes())
        atomic = (model_pb2.ModelProto.SentencePiece.CONTROL, model_pb2.ModelProto.SentencePiece.USER_DEFINED)
        added = {p.piece for p in proto.pieces if p.type in atomic}

        return ReferenceTokenizer(
            encode_text=lambda text: list(sp.encode(text)),
            decode=lambda ids: sp.decode(list(ids)),
            bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
            eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
            vocab_size=sp.get_piece_size(),
            markers=marker_style(lambda marker: marker in added, fmt),
            fmt=fmt,
        )
    transformers = require("transformers")
    transformers.logging.set_verbosity_error()  # it warns that the LLaVA model type is not one it knows
    tok = transformers.AutoTokenizer.from_pretrained(str(root))
    added = tok.get_added_vocab()
    return ReferenceTokenizer(
        encode_text=lambda text: list(tok(text, add_special_tokens=False).input_ids),
        decode=lambda ids: tok.decode(list(ids), skip_special_tokens=False),
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        vocab_size=len(tok),
        markers=marker_style(lambda marker: marker in added, fmt),
        fmt=fmt,
    )
