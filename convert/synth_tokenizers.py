"""Tokenizers in the two real file formats of the families' language models, for test checkpoints.

A byte-level BPE ships as `tokenizer.json` (+ `vocab.json`, `merges.txt`) with the model's
pre-tokenizer split pattern and special tokens appended after the learned vocabulary; a
sentencepiece model ships as `tokenizer.model` with byte fallback. Converters and parity checks
must handle both for real, so the factory trains small ones of each kind offline, or rebuilds a
real vocabulary from one of llama.cpp's vocab-only GGUFs in the llama-cpp-python sdist
(docs/model.md "Tokenization"). What is particular to a family (split pattern, special tokens,
tokenizer_config.json) is its `BpeStyle` / `SpmStyle`, declared in its family module.

Whether the chat markers `<|user|>` / `<|assistant|>` are added tokens of a published tokenizer
is a property of that tokenizer, so each writer takes the marker style: `tokens` (added tokens;
sentencepiece user-defined pieces) or `text` (not in the vocabulary at all).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo_cli.engine.gguf_tokens import MARKERS_AS_TOKENS
from huatuo_cli.engine.prompt import ASSISTANT_MARKER, USER_MARKER
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require


@dataclass(frozen=True)
class BpeStyle:
    """What a family's byte-level BPE tokenizer files look like besides their vocabulary."""

    split_regex: str  # the pre-tokenizer's split pattern (before the byte-level step)
    special_tokens: tuple[str, ...]  # appended after the learned vocabulary, as CONTROL tokens
    eos: str  # also the pad token
    tokenizer_config: dict[str, Any]  # tokenizer_config.json without its token entries


@dataclass(frozen=True)
class SpmStyle:
    """What a family's sentencepiece tokenizer files look like besides their pieces."""

    bos: str  # BOS / EOS pieces of a trained tokenizer (a real vocabulary brings its own)
    eos: str
    tokenizer_config: dict[str, Any]  # tokenizer_config.json without its token entries

#: HuatuoGPT's chat markers; added tokens in the `tokens` marker style, absent in `text`.
CHAT_MARKERS = [USER_MARKER, ASSISTANT_MARKER]

#: Training text: English and Chinese clinical phrases, numbers, whitespace runs, markers.
TRAINING_CORPUS = """\
The chest radiograph shows a small left pleural effusion without pneumothorax.
There is no focal consolidation. The cardiomediastinal silhouette is within normal limits.
Axial CT images of the abdomen demonstrate a 2.3 cm hypodense lesion in segment VII of the liver.
MRI of the brain: no acute infarct, hemorrhage, or mass effect. Ventricles are normal in size.
Impression: findings consistent with community-acquired pneumonia in the right lower lobe.
Is there a pleural effusion? What is the modality of this image? Describe the abnormality.
胸部X线片显示左侧少量胸腔积液，未见气胸。心影大小正常。肝脏可见低密度病灶，直径约2.3厘米。
头颅CT未见明显出血。请描述这张图像中的异常表现。这是什么检查方式？诊断意见：右下肺炎。
Patient age 67, heart rate 88 bpm, blood pressure 135/85 mmHg, SpO2 94%, temperature 38.2 C.
    Indented findings:\tnodule 4 mm, 8 mm, 12 mm;   spacing   runs   and\n\n blank lines.
Radiology report. Findings. Impression. Recommendation: follow-up CT in 3 months.
Medical terms: atelectasis, cardiomegaly, emphysema, fibrosis, hernia, infiltration, edema.
1234567890 0.5 0.25 100% 3.14159 2024-06-28 T2-weighted FLAIR DWI ADC SUV 7.8.
"""


def _corpus_lines(repeats: int = 30) -> list[str]:
    lines = [line for line in TRAINING_CORPUS.splitlines() if line.strip()]
    return lines * repeats


def _bpe_pipeline(tok, style: BpeStyle) -> None:
    """The normaliser, pre-tokenizer (split pattern, then bytes) and decoder of a byte-level BPE."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(style.split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)


def _vocab_gguf(path: Path, model: str):
    """A llama.cpp vocab-only GGUF's reader, checked to hold a `model` (gpt2 / llama) vocabulary."""
    gguf = require("gguf")
    reader = gguf.GGUFReader(str(path), "r")
    field = reader.get_field("tokenizer.ggml.model")
    if field is None or field.contents() != model:
        raise HuatuoError(f"{path} is not a {model} vocabulary GGUF (tokenizer.ggml.model is "
                          f"{field.contents() if field is not None else 'missing'})")
    return reader


def _gguf_list(reader, key: str) -> list:
    field = reader.get_field(key)
    return list(field.contents()) if field is not None else []


def real_bpe_tokenizer(vocab_gguf: Path, style: BpeStyle):
    """A real byte-level BPE (a `tokenizers.Tokenizer`) from a llama.cpp vocab-only GGUF of model
    `gpt2`: its NORMAL tokens and merges as the BPE model, its CONTROL tokens as special added
    tokens with their own ids (they must follow the BPE vocabulary, as `style`'s special tokens do)."""
    from tokenizers import Tokenizer, models

    reader = _vocab_gguf(vocab_gguf, "gpt2")
    tokens, types = _gguf_list(reader, "tokenizer.ggml.tokens"), _gguf_list(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _gguf_list(reader, "tokenizer.ggml.merges")]
    normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == 1}
    control = [(i, t) for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == 3]
    if [i for i, _ in control] != list(range(len(normal), len(normal) + len(control))):
        raise HuatuoError(f"{vocab_gguf}: the control tokens do not follow the BPE vocabulary")
    tok = Tokenizer(models.BPE(vocab=normal, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    _bpe_pipeline(tok, style)
    tok.add_special_tokens([t for _, t in control])
    return tok


def write_bpe_tokenizer(out: Path, vocab_size: int, markers: str = MARKERS_AS_TOKENS,
                        vocab_gguf: Path | None = None, *, style: BpeStyle) -> dict:
    """Write a byte-level BPE in `style` as tokenizer.json, vocab.json, merges.txt: trained on a
    small corpus, or a real one from `vocab_gguf` (then `vocab_size` is ignored).

    Returns the token-id facts the model config needs (size, eos, pad).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_gguf is not None:
        tok = real_bpe_tokenizer(vocab_gguf, style)
        # the family's special tokens the vocabulary file lacks follow its own (Qwen2.5-VL's 19 after the base vocabulary's three)
        tok.add_special_tokens([t for t in style.special_tokens if tok.token_to_id(t) is None])
    else:
        tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
        _bpe_pipeline(tok, style)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus_lines(), trainer=trainer)
        tok.add_special_tokens(list(style.special_tokens))  # after the learned vocabulary
    if markers == MARKERS_AS_TOKENS:
        tok.add_special_tokens(CHAT_MARKERS)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as such repositories carry them too
    eos = style.eos
    config = {**style.tokenizer_config, "bos_token": None, "eos_token": eos, "pad_token": eos, "unk_token": None}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": eos, "pad_token": eos}, indent=2)
    )
    return {
        "size": tok.get_vocab_size(with_added_tokens=True),
        "bos_token_id": None,
        "eos_token_id": tok.token_to_id(eos),
        "pad_token_id": tok.token_to_id(eos),
    }


def real_spm_model(vocab_gguf: Path, markers: str) -> bytes:
    """A real sentencepiece model (serialised `ModelProto`) from a llama.cpp vocab-only GGUF of
    model `llama` (e.g. `ggml-vocab-llama-spm.gguf`: 32 000 pieces): its pieces with their scores
    and types, BPE with byte fallback, an identity normaliser with dummy prefix and whitespace
    kept; the chat markers appended as user-defined pieces in the `tokens` style."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    reader = _vocab_gguf(vocab_gguf, "llama")
    proto = model_pb2.ModelProto()
    pieces = zip(_gguf_list(reader, "tokenizer.ggml.tokens"), _gguf_list(reader, "tokenizer.ggml.scores"),
                 _gguf_list(reader, "tokenizer.ggml.token_type"), strict=True)
    for text, score, kind in pieces:  # gguf.TokenType numbers are sentencepiece's piece types
        proto.pieces.add(piece=text, score=float(score), type=int(kind))
    if markers == MARKERS_AS_TOKENS:
        for marker in CHAT_MARKERS:
            proto.pieces.add(piece=marker, score=0.0, type=model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    trainer = proto.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(proto.pieces)
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    trainer.unk_piece, trainer.bos_piece, trainer.eos_piece = "<unk>", "<s>", "</s>"
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def _write_spm_config(out: Path, style: SpmStyle, bos: str, eos: str) -> None:
    """tokenizer_config.json and special_tokens_map.json beside a `tokenizer.model`."""
    config = {**style.tokenizer_config, "bos_token": bos, "eos_token": eos, "unk_token": "<unk>", "pad_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": eos, "unk_token": "<unk>"}, indent=2))


def write_spm_tokenizer(out: Path, vocab_size: int, markers: str = MARKERS_AS_TOKENS,
                        vocab_gguf: Path | None = None, *, style: SpmStyle) -> dict:
    """Write a sentencepiece BPE (byte fallback) in `style`: trained on a small corpus with
    <unk> and the style's BOS/EOS pieces, or a real one (<unk>/<s>/</s>) from `vocab_gguf`.

    Only `tokenizer.model` is written, as the reference behaviour is sentencepiece's own (the
    official code ran transformers 4.x's slow, sentencepiece-backed tokenizer).
    """
    import sentencepiece as spm

    if vocab_gguf is not None:
        proto = real_spm_model(vocab_gguf, markers)
        (out / "tokenizer.model").write_bytes(proto)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        _write_spm_config(out, style, "<s>", "</s>")
        return {"size": sp.get_piece_size(), "bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(), "pad_token_id": 0}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece=style.bos,
        eos_piece=style.eos,
        user_defined_symbols=CHAT_MARKERS if markers == MARKERS_AS_TOKENS else [],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _write_spm_config(out, style, style.bos, style.eos)
    return {
        "size": sp.get_piece_size(),
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "pad_token_id": 0,
    }
