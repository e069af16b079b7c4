"""Tiny tokenizers in the real formats of HuatuoGPT-Vision's two language models.

The 7B model (Qwen2) ships a byte-level BPE `tokenizer.json` with Qwen2's pre-tokenizer regex
and special tokens appended after the learned vocabulary; the 34B model (Yi-1.5, llama
architecture) ships a sentencepiece `tokenizer.model` with byte fallback. Converters and parity
checks must handle both for real, so the factory trains small ones of each kind offline.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from huatuo_cli.prompt import ASSISTANT_MARKER, USER_MARKER

#: Qwen2's pre-tokenizer split pattern (tokenizer.json of Qwen/Qwen2-7B).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: HuatuoGPT's chat markers; registered as added tokens so that they are atomic.
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


def write_qwen2_tokenizer(out: Path, vocab_size: int) -> dict:
    """Train a byte-level BPE like Qwen2's and write tokenizer.json, vocab.json, merges.txt.

    Returns the token-id facts the model config needs (size, eos, pad).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    # Qwen2 appends its special tokens after the learned vocabulary.
    tok.add_special_tokens(QWEN2_SPECIAL_TOKENS + CHAT_MARKERS)
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


def write_yi_tokenizer(out: Path, vocab_size: int) -> dict:
    """Train a sentencepiece BPE like Yi-1.5's (byte fallback, <unk>/<|startoftext|>/<|endoftext|>).

    Only `tokenizer.model` is written, as the reference behaviour is sentencepiece's own (the
    official code ran transformers 4.x's slow, sentencepiece-backed LlamaTokenizer).
    """
    import sentencepiece as spm

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
        user_defined_symbols=CHAT_MARKERS,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
        "model_max_length": 4096,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
            indent=2,
        )
    )
    return {
        "size": sp.get_piece_size(),
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "pad_token_id": 0,
    }
