"""Tokenizers in the real formats of HuatuoGPT-Vision's two language models, for test checkpoints.

The 7B model (Qwen2) ships a byte-level BPE `tokenizer.json` with Qwen2's pre-tokenizer regex
and special tokens appended after the learned vocabulary; the 34B model (Yi-1.5, llama
architecture) ships a sentencepiece `tokenizer.model` with byte fallback. Converters and parity
checks must handle both for real, so the factory trains small ones of each kind offline, or
rebuilds a real vocabulary from one of llama.cpp's vocab-only GGUFs (`ggml-vocab-qwen2.gguf`:
Qwen2's 151 643 BPE tokens and merges; `ggml-vocab-llama-spm.gguf`: LLaMA's 32 000 sentencepiece
pieces), which ship in the llama-cpp-python sdist (docs/model.md "Tokenization").

Whether the chat markers `<|user|>` / `<|assistant|>` are added tokens of the published tokenizer
is not known (base Qwen2 defines none), so each writer takes the marker style: `tokens` (added
tokens; sentencepiece user-defined pieces) or `text` (not in the vocabulary at all).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_cli.gguf_tokens import MARKERS_AS_TOKENS
from huatuo_cli.prompt import ASSISTANT_MARKER, USER_MARKER

#: Qwen2's pre-tokenizer split pattern (tokenizer.json of Qwen/Qwen2-7B).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
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


def _qwen2_pipeline(tok) -> None:
    """Qwen2's normaliser, pre-tokenizer and decoder (tokenizer.json of Qwen/Qwen2-7B)."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
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


def real_qwen2_tokenizer(vocab_gguf: Path):
    """Qwen2's real byte-level BPE (a `tokenizers.Tokenizer`) from llama.cpp's `ggml-vocab-qwen2.gguf`:
    its NORMAL tokens and merges as the BPE model, its CONTROL tokens (`<|endoftext|>`,
    `<|im_start|>`, `<|im_end|>`) as special added tokens with their own ids."""
    from tokenizers import Tokenizer, models

    reader = _vocab_gguf(vocab_gguf, "gpt2")
    tokens, types = _gguf_list(reader, "tokenizer.ggml.tokens"), _gguf_list(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _gguf_list(reader, "tokenizer.ggml.merges")]
    normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == 1}
    control = [(i, t) for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == 3]
    if [i for i, _ in control] != list(range(len(normal), len(normal) + len(control))):
        raise HuatuoError(f"{vocab_gguf}: the control tokens do not follow the BPE vocabulary, as Qwen2's do")
    tok = Tokenizer(models.BPE(vocab=normal, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    _qwen2_pipeline(tok)
    tok.add_special_tokens([t for _, t in control])
    return tok


def write_qwen2_tokenizer(out: Path, vocab_size: int, markers: str = MARKERS_AS_TOKENS,
                          vocab_gguf: Path | None = None) -> dict:
    """Write a byte-level BPE like Qwen2's as tokenizer.json, vocab.json, merges.txt: trained on a
    small corpus, or Qwen2's real one from `vocab_gguf` (then `vocab_size` is ignored).

    Returns the token-id facts the model config needs (size, eos, pad).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_gguf is not None:
        tok = real_qwen2_tokenizer(vocab_gguf)
    else:
        tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
        _qwen2_pipeline(tok)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus_lines(), trainer=trainer)
        # Qwen2 appends its special tokens after the learned vocabulary.
        tok.add_special_tokens(QWEN2_SPECIAL_TOKENS)
    if markers == MARKERS_AS_TOKENS:
        tok.add_special_tokens(CHAT_MARKERS)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as Qwen2 repositories carry them
    eos = "<|endoftext|>"
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": eos,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
    }
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


def real_llama_spm_model(vocab_gguf: Path, markers: str) -> bytes:
    """LLaMA's real sentencepiece model (serialised `ModelProto`) from llama.cpp's
    `ggml-vocab-llama-spm.gguf`: its 32 000 pieces with their scores and types, BPE with byte
    fallback, LLaMA's normaliser (identity, dummy prefix, whitespace kept); the chat markers appended
    as user-defined pieces in the `tokens` style."""
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


def _write_llama_config(out: Path, bos: str, eos: str) -> None:
    """tokenizer_config.json and special_tokens_map.json of a LLaMA-style (Yi) repository."""
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
        "model_max_length": 4096,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": eos, "unk_token": "<unk>"}, indent=2))


def write_yi_tokenizer(out: Path, vocab_size: int, markers: str = MARKERS_AS_TOKENS,
                       vocab_gguf: Path | None = None) -> dict:
    """Write a sentencepiece BPE like Yi-1.5's (byte fallback): trained on a small corpus with
    <unk>/<|startoftext|>/<|endoftext|>, or LLaMA's real one (<unk>/<s>/</s>) from `vocab_gguf`.

    Only `tokenizer.model` is written, as the reference behaviour is sentencepiece's own (the
    official code ran transformers 4.x's slow, sentencepiece-backed LlamaTokenizer).
    """
    import sentencepiece as spm

    if vocab_gguf is not None:
        proto = real_llama_spm_model(vocab_gguf, markers)
        (out / "tokenizer.model").write_bytes(proto)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        _write_llama_config(out, "<s>", "</s>")
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
        bos_piece="<|startoftext|>",
        eos_piece="<|endoftext|>",
        user_defined_symbols=CHAT_MARKERS if markers == MARKERS_AS_TOKENS else [],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _write_llama_config(out, "<|startoftext|>", "<|endoftext|>")
    return {
        "size": sp.get_piece_size(),
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "pad_token_id": 0,
    }
