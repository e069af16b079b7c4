"""The checkpoint's tokenizer as GGUF vocabulary metadata, in the form llama.cpp tokenizes with.

A byte-level BPE (`bpe_vocab`) as `tokenizer.ggml.model = gpt2` with the family's `pre` (llama.cpp
then applies that model's split regex), tokens, types and merges. A sentencepiece model
(`spm_vocab`) as `tokenizer.ggml.model = llama` with scores and the piece types straight from
`tokenizer.model`; its dummy-prefix space becomes `huatuo.tokenizer.chunk_prefix` (see huatuo_cli.engine.gguf_tokens). In both,
`huatuo.tokenizer.markers` records whether the chat markers are tokens of the checkpoint's tokenizer
or plain text, and `add_bos_token` is false: HuatuoGPT-Vision's own code adds no BOS (docs/model.md
"Tokenization"). The token list is padded with `[PAD{i}]` rows up to the config's `vocab_size`,
because llama.cpp requires one token per embedding row.
The chat template is the jinja form of `huatuo_cli.engine.prompt`'s format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from huatuo_cli.engine.gguf_tokens import CHUNK_PREFIX_KEY, MARKERS_KEY
from huatuo_cli.engine.prompt import prompt_format
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.reference_tokenizer import load_reference_tokenizer

#: HuatuoGPT-Vision's prompt format (docs/model.md) as a chat template. Contents are used as given:
#: the caller prepends `<image>\n` per image and moderates user text, as `prompt.render` does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n<|assistant|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + ' \\n' }}"
    "{% endif %}{% endfor %}"
)


@dataclass
class GgufVocab:
    """Everything `tokenizer.ggml.*` needs."""

    model: str  # "gpt2" or "llama"
    pre: str | None
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    scores: list[float] | None
    merges: list[str]
    add_space_prefix: bool | None
    special_ids: dict[str, int]  # bos/eos/unk/pad -> id
    #: `tokens` or `text` (huatuo_cli.engine.gguf_tokens): how the checkpoint's tokenizer treats the chat markers
    markers: str
    #: prepended by the runtime to each non-empty text chunk (huatuo_cli.engine.gguf_tokens)
    chunk_prefix: str = ""


def _pad(tokens: list[str | None], types: list[int], n_vocab: int) -> tuple[list[str], list[int]]:
    gguf = require("gguf")
    if len(tokens) > n_vocab:
        raise HuatuoError(f"the tokenizer has {len(tokens)} tokens but the model only {n_vocab} embedding rows")
    out_tokens, out_types = [], []
    for i in range(n_vocab):
        tok = tokens[i] if i < len(tokens) else None
        if tok is None:
            out_tokens.append(f"[PAD{i}]")
            out_types.append(int(gguf.TokenType.UNUSED))
        else:
            out_tokens.append(tok)
            out_types.append(types[i])
    return out_tokens, out_types


def _special_ids(ckpt: LlavaCheckpoint, n_vocab: int, *, merges: bool) -> tuple[dict[str, int], list[str]]:
    gguf = require("gguf")
    special = gguf.SpecialVocab(ckpt.root, load_merges=merges, n_vocab=n_vocab,
                                special_token_types=("bos", "eos", "unk", "pad"))
    return dict(special.special_token_ids), list(special.merges)


def _fast_tokenizer_json(ckpt: LlavaCheckpoint) -> dict:
    """The checkpoint's fast tokenizer as `tokenizer.json` data: the file itself, or what transformers
    builds from `vocab.json` + `merges.txt` (+ `added_tokens.json`), as some repositories ship."""
    path = ckpt.root / "tokenizer.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if not ((ckpt.root / "vocab.json").is_file() and (ckpt.root / "merges.txt").is_file()):
        found = ", ".join(sorted(p.name for p in ckpt.root.iterdir() if "token" in p.name or p.suffix == ".txt")) or "none"
        raise HuatuoError(f"no byte-level BPE tokenizer in {ckpt.root}: looked for tokenizer.json, or vocab.json with merges.txt "
                          f"(tokenizer files found: {found})",
                          hint="copy the tokenizer files of the original checkpoint next to config.json")
    transformers = require("transformers")
    transformers.logging.set_verbosity_error()
    return json.loads(transformers.AutoTokenizer.from_pretrained(str(ckpt.root)).backend_tokenizer.to_str())


def bpe_vocab(ckpt: LlavaCheckpoint, n_vocab: int, *, pre: str) -> GgufVocab:
    """A byte-level BPE tokenizer's vocabulary; `pre` names llama.cpp's pre-tokenizer for it."""
    gguf = require("gguf")
    data = _fast_tokenizer_json(ckpt)
    if data.get("model", {}).get("type") != "BPE":
        raise HuatuoError(f"tokenizer.json is not a byte-level BPE tokenizer, as {ckpt.family.name}'s is")
    size = max([*data["model"]["vocab"].values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    tokens: list[str | None] = [None] * size
    types = [int(gguf.TokenType.NORMAL)] * size
    for text, idx in data["model"]["vocab"].items():
        tokens[idx] = text
    for added in data.get("added_tokens", []):
        # llama.cpp splits CONTROL and USER_DEFINED tokens out of the text before BPE, as HF does
        # with added tokens; special ones are CONTROL (only parsed when asked), others USER_DEFINED.
        tokens[added["id"]] = added["content"]
        types[added["id"]] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    padded, padded_types = _pad(tokens, types, n_vocab)
    ids, merges = _special_ids(ckpt, n_vocab, merges=True)
    if not merges:
        raise HuatuoError("the tokenizer has no merges (tokenizer.json or merges.txt); llama.cpp's BPE needs them")
    ref = load_reference_tokenizer(ckpt.root, prompt_format(ckpt.family.prompt_format))
    return GgufVocab(model="gpt2", pre=pre, tokens=padded, types=padded_types, scores=None, merges=merges,
                     add_space_prefix=None, special_ids=ids, markers=ref.markers)


def spm_vocab(ckpt: LlavaCheckpoint, n_vocab: int) -> GgufVocab:
    """A sentencepiece tokenizer's vocabulary (`tokenizer.model`, + `added_tokens.json`)."""
    require("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    path = ckpt.root / "tokenizer.model"
    if not path.is_file():
        raise HuatuoError(f"no tokenizer.model in {ckpt.root} (a sentencepiece checkpoint ships one)")
    proto = model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    # sentencepiece's piece types use the same numbers as gguf.TokenType (NORMAL=1 ... BYTE=6).
    tokens: list[str | None] = [p.piece for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    added_path = ckpt.root / "added_tokens.json"
    if added_path.is_file():
        for text, idx in sorted(json.loads(added_path.read_text()).items(), key=lambda kv: kv[1]):
            if idx < len(tokens):
                continue
            if idx != len(tokens):
                raise HuatuoError(f"added_tokens.json leaves a gap before id {idx}")
            tokens.append(text)
            types.append(4)  # USER_DEFINED
            scores.append(-1000.0)
    padded, padded_types = _pad(tokens, types, n_vocab)
    ids, _ = _special_ids(ckpt, n_vocab, merges=False)
    for key, idx in (("bos", proto.trainer_spec.bos_id), ("eos", proto.trainer_spec.eos_id),
                     ("unk", proto.trainer_spec.unk_id)):
        if key not in ids and 0 <= idx < n_vocab:
            ids[key] = idx
    ref = load_reference_tokenizer(ckpt.root, prompt_format(ckpt.family.prompt_format))
    # sentencepiece adds its dummy prefix once per text; llama.cpp's add_space_prefix would also
    # add one after every user-defined token (<|user|>): off here, the runtime prepends it instead.
    return GgufVocab(
        model="llama", pre="default", tokens=padded, types=padded_types,
        scores=scores + [-1000.0] * (n_vocab - len(scores)), merges=[],
        add_space_prefix=False, special_ids=ids, markers=ref.markers,
        chunk_prefix=" " if proto.normalizer_spec.add_dummy_prefix else "",
    )


def vocab_for(ckpt: LlavaCheckpoint) -> GgufVocab:
    """The vocabulary the checkpoint's family writes, one token per embedding row."""
    return ckpt.family.vocab(ckpt, int(ckpt.config["vocab_size"]))


def add_vocab(writer, vocab: GgufVocab) -> None:
    """Write `tokenizer.ggml.*` and the chat template."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for key, idx in vocab.special_ids.items():
        getattr(writer, f"add_{key}_token_id")(idx)
    writer.add_add_bos_token(False)  # the official code adds none (docs/model.md "Tokenization")
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_string(MARKERS_KEY, vocab.markers)
    if vocab.chunk_prefix:
        writer.add_string(CHUNK_PREFIX_KEY, vocab.chunk_prefix)
