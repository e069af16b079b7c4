"""The tokenizer behaviour the official HuatuoGPT-Vision code had, as the parity reference.

Qwen2 (7B): the checkpoint's fast tokenizer (`tokenizer.json`) through transformers.
Yi / llama (34B): the official code ran transformers 4.x's slow `LlamaTokenizer` (legacy mode),
which is sentencepiece itself on each text piece; transformers 5 converts `tokenizer.model` to a
fast tokenizer that differs on whitespace runs, so sentencepiece is used directly here.
Prompts are tokenized per chunk between `<image>` markers, BOS only on the first chunk, exactly as
LLaVA's `tokenizer_image_token` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huatuo_cli.extras import require
from huatuo_cli.prompt import split_at_images


@dataclass
class ReferenceTokenizer:
    encode_text: Callable[[str], list[int]]  # no special prefix tokens
    decode: Callable[[list[int]], str]
    bos_id: int | None
    add_bos: bool
    eos_id: int | None
    vocab_size: int

    def encode_chunks(self, prompt: str) -> list[list[int]]:
        """Token ids of each text chunk between image placeholders (BOS on the first chunk only)."""
        chunks = [self.encode_text(c) for c in split_at_images(prompt)]
        if self.add_bos and self.bos_id is not None:
            chunks[0] = [self.bos_id] + chunks[0]
        return chunks


def load_reference_tokenizer(root: Path) -> ReferenceTokenizer:
    root = Path(root)
    cfg_path = root / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if (root / "tokenizer.model").is_file() and cfg.get("tokenizer_class", "").startswith("Llama"):
        spm = require("sentencepiece")
        sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
        return ReferenceTokenizer(
            encode_text=lambda text: list(sp.encode(text)),
            decode=lambda ids: sp.decode(list(ids)),
            bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
            add_bos=bool(cfg.get("add_bos_token", True)),
            eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
            vocab_size=sp.get_piece_size(),
        )
    transformers = require("transformers")
    transformers.logging.set_verbosity_error()  # it warns that `llava_qwen2` is not a model type it knows
    tok = transformers.AutoTokenizer.from_pretrained(str(root))
    return ReferenceTokenizer(
        encode_text=lambda text: list(tok(text, add_special_tokens=False).input_ids),
        decode=lambda ids: tok.decode(list(ids), skip_special_tokens=False),
        bos_id=tok.bos_token_id,
        add_bos=bool(cfg.get("add_bos_token", False)) and tok.bos_token_id is not None,
        eos_id=tok.eos_token_id,
        vocab_size=len(tok),
    )
