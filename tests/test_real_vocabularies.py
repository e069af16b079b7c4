"""Issue 19: the published checkpoints' tokenizers, rebuilt from real vocabularies, convert and answer.

Qwen2's real byte-level BPE (7B layout) and LLaMA's real sentencepiece vocabulary (standing in for
Yi's, 34B layout) come from llama.cpp's vocab-only GGUFs in the llama-cpp-python sdist
(`tests/real_vocab.py`). Each is built into a tiny random checkpoint twice: with the chat markers
`<|user|>` / `<|assistant|>` as added tokens and as plain text (base Qwen2 defines no such tokens).
`huatuo convert all` must pass every gate on all four, and `huatuo ask` must give the greedy tokens
of a reference that tokenizes as HuatuoGPT-Vision's `cli.py` does: each chunk between images whole,
`add_special_tokens=False` (no BOS), sentencepiece itself for the 34B.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from click.testing import CliRunner
from PIL import Image

from huatuo_cli.bundles.bundle import load_bundle
from huatuo_cli.cli import cli
from huatuo_cli.engine.gguf_tokens import MARKERS_KEY, encode_chunks
from huatuo_cli.engine.prompt import Turn, encode_prompt, render, tokenizer_calls
from huatuo_convert.families.llava_qwen2 import QWEN2_TOKENIZER
from huatuo_convert.reference import LlavaReference
from huatuo_convert.reference_tokenizer import load_reference_tokenizer
from huatuo_convert.synth_tokenizers import real_bpe_tokenizer, real_spm_model
from tests.real_vocab import LLAMA_SPM, QWEN2, cases, vocab_dir
from tests.reference_answers import assert_ask_gives_the_reference_tokens

#: HuatuoGPT-Vision-7B's config.json states 152 064 embedding rows (Qwen2-7B's padded vocabulary).
QWEN2_7B_ROWS = 152064
QUESTIONS = ("Is there a pleural effusion?", "这张胸片有胸腔积液吗？请描述异常表现。")
N_TOKENS = 12
KINDS = [(arch, markers) for arch in ("llava-qwen2", "llava-llama") for markers in ("text", "tokens")]


@pytest.fixture(scope="session")
def vocabs() -> Path:
    return vocab_dir()


@pytest.fixture(scope="session")
def real_checkpoint(make_checkpoint, vocabs):
    def make(arch: str, markers: str) -> Path:
        if arch == "llava-qwen2":
            return make_checkpoint(arch=arch, markers=markers, vocab_from=str(vocabs / QWEN2),
                                   padded_vocab_size=QWEN2_7B_ROWS, shards=3)
        return make_checkpoint(arch=arch, markers=markers, vocab_from=str(vocabs / LLAMA_SPM),
                               vision_layout="folder")
    return make


@pytest.fixture(scope="session")
def real_bundles(real_checkpoint, tmp_path_factory):
    """`huatuo convert all` (F16: every gate, end to end included, must pass) per kind, built once."""
    built: dict[tuple[str, str], Path] = {}

    def make(arch: str, markers: str) -> Path:
        if (arch, markers) not in built:
            out = tmp_path_factory.mktemp("real-vocab") / f"{arch}-{markers}"
            res = CliRunner().invoke(cli, ["convert", "all", str(real_checkpoint(arch, markers)), str(out),
                                           "--quant", "f16"])
            assert res.exit_code == 0, res.output
            built[arch, markers] = out
        return built[arch, markers]
    return make


# -- the rebuilt vocabularies are the real ones ----------------------------------------------------------

def test_rebuilt_qwen2_tokenizer_reproduces_the_original_cases(vocabs):
    """llama.cpp's `.out` ids were written by the original Qwen2 tokenizer; the rebuilt one gives them all."""
    tok = real_bpe_tokenizer(vocabs / QWEN2, QWEN2_TOKENIZER)
    got = [(text, tok.encode(text, add_special_tokens=False).ids) for text, _ in cases(vocabs / QWEN2)]
    assert got == cases(vocabs / QWEN2)
    assert tok.get_vocab_size() == 151646 and tok.token_to_id("<|endoftext|>") == 151643


def test_rebuilt_llama_spm_model_reproduces_the_original_cases(vocabs):
    sp = spm.SentencePieceProcessor(model_proto=real_spm_model(vocabs / LLAMA_SPM, "text"))
    assert [(text, list(sp.encode(text))) for text, _ in cases(vocabs / LLAMA_SPM)] == cases(vocabs / LLAMA_SPM)
    assert sp.get_piece_size() == 32000


@pytest.mark.parametrize("arch,markers", KINDS)
def test_checkpoint_tokenizer_files_tokenize_as_the_real_vocabulary(real_checkpoint, vocabs, arch, markers):
    """What a checkpoint ships (tokenizer.json / tokenizer.model + configs) is the real vocabulary, and
    the reference sees the markers as the checkpoint defines them."""
    ref = load_reference_tokenizer(real_checkpoint(arch, markers))
    assert ref.markers == markers
    vocab = vocabs / (QWEN2 if arch == "llava-qwen2" else LLAMA_SPM)
    assert [(text, ref.encode_text(text)) for text, _ in cases(vocab)] == cases(vocab)
    chunks = ref.encode_chunks(render([Turn("Is there an effusion?", images=1)]))
    assert ref.bos_id is None or ref.bos_id not in sum(chunks, [])  # cli.py: no BOS anywhere
    if markers == "text" and arch == "llava-qwen2":
        assert 397 in chunks[0]  # Qwen2 joins `|>` with the newline: `>\n` is one token


def test_prompt_is_cut_into_the_official_tokenizer_calls():
    """cli.py: a past turn is two calls (user part, assistant part), the open turn one; images cut calls."""
    prompt = render([Turn("Compare.", images=2, answer="Same."), Turn("And now?", images=1)])
    assert tokenizer_calls(prompt) == ["<|user|>\n<image>\n<image>\nCompare.\n", "<|assistant|>\nSame. \n",
                                       "<|user|>\n<image>\nAnd now?\n<|assistant|>\n"]
    calls: list[str] = []
    chunks = encode_prompt(prompt, lambda text: calls.append(text) or [len(calls)])
    assert calls == ["<|user|>\n", "\n", "\nCompare.\n", "<|assistant|>\nSame. \n", "<|user|>\n",
                     "\nAnd now?\n<|assistant|>\n"]
    assert chunks == [[1], [2], [3, 4, 5], [6]]  # 3 images, 4 chunks; calls without an image between join
    assert tokenizer_calls("no markers at all") == ["no markers at all"] and encode_prompt("", lambda t: []) == [[]]


def test_the_gate_fails_when_the_gguf_sees_the_markers_otherwise():
    from huatuo_convert.gguf_verify import failures

    tokenizer = {"strings": 3, "identical": 3, "mismatches": [], "markers": {"reference": "text", "gguf": "tokens"}}
    assert failures({"tokenizer": tokenizer, "quantization": "q4_k_m"}) == [
        "the chat markers are text for the checkpoint's tokenizer but tokens in the GGUF"]
    tokenizer["markers"]["gguf"] = "text"
    assert failures({"tokenizer": tokenizer, "quantization": "q4_k_m"}) == []


# -- convert all and ask ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch,markers", KINDS)
def test_convert_all_passes_every_gate_and_ask_gives_the_reference_tokens(
        real_checkpoint, real_bundles, tmp_path, arch, markers):
    src, bundle = real_checkpoint(arch, markers), real_bundles(arch, markers)
    manifest = load_bundle(bundle).manifest
    fidelity = manifest.fidelity
    assert fidelity["llm"]["passed"] and fidelity["llm"]["tokenizer"]["mismatches"] == []
    assert fidelity["llm"]["tokenizer"]["markers"] == {"reference": markers, "gguf": markers}
    assert fidelity["end_to_end"]["identical"]
    assert manifest.llm["prompt_markers"] == markers

    ref = LlavaReference.load(src)
    image_path = tmp_path / "scan.png"
    rng = np.random.default_rng(19)
    Image.fromarray(rng.integers(0, 255, (80, 64), dtype=np.uint8)).save(image_path)
    for question in QUESTIONS:
        assert_ask_gives_the_reference_tokens(ref, bundle, image_path, question, N_TOKENS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llava-qwen2", "llava-llama"])
def test_the_pre_fix_tokenization_fails_on_plain_text_markers(real_bundles, real_checkpoint, arch):
    """Cutting the chunk at the markers (the tokenization before issue 19) gives other ids than the
    checkpoint's own tokenizer where the markers are plain text: the test above would catch it."""
    from huatuo_cli.engine.cpu_backend import llama

    bundle = real_bundles(arch, "text")
    vocab = llama().Llama(str(next(bundle.glob("llm-*.gguf"))), vocab_only=True, verbose=False)
    assert vocab.metadata[MARKERS_KEY] == "text"
    prompt = render([Turn(QUESTIONS[0], images=1)])
    want = load_reference_tokenizer(real_checkpoint(arch, "text")).encode_chunks(prompt)
    assert encode_chunks(vocab, prompt) == want
    vocab.metadata[MARKERS_KEY] = "tokens"  # what a GGUF without the key (or the old code) did
    assert encode_chunks(vocab, prompt) != want

