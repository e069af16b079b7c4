"""Image embeddings injected into llama.cpp give the PyTorch reference's greedy answer.

The F16 GGUF is written by `huatuo convert gguf`; image embeddings come first from the reference
itself (isolating the injection through `llama_batch.embd`), then from ONNX Runtime (the path
the workstation runs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from huatuo_cli.engine.llm import LlamaEngine, Sampling
from huatuo_cli.engine.prompt import Turn, render
from huatuo_cli.engine.session import interleave
from huatuo_cli.errors import HuatuoError
from huatuo_convert.reference import LlavaReference
from tests.conftest import LAYOUTS
from tests.convert_helpers import convert_gguf

N_TOKENS = 16


def engine_segments(engine: LlamaEngine, prompt: str, embeds: list[np.ndarray]):
    return interleave(engine.tokenize(prompt), embeds)


@pytest.fixture(scope="module")
def pixels():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 56, 56, generator=gen)


@pytest.mark.parametrize("arch,layout", LAYOUTS[::3])  # qwen2-embedded, llama-folder
def test_injected_embeddings_reproduce_reference_greedy(make_checkpoint, tmp_path, pixels, arch, layout):
    src = make_checkpoint(arch=arch, vision_layout=layout)
    ref = LlavaReference.load(src)
    engine = LlamaEngine(convert_gguf(src, tmp_path / "llm.gguf"), n_ctx=512, n_threads=2)
    for n_images, question in ((1, "Is there a pleural effusion?"), (2, "比较这两张图像。Compare them.")):
        prompt = render([Turn(question, images=n_images)])
        # the runtime's token chunks are the reference's token chunks
        assert engine.tokenize(prompt) == ref.tokenizer.encode_chunks(prompt)
        px = pixels[:n_images]
        embeds, _ = ref.prompt_embeds(prompt, px)
        expected = ref.greedy(embeds, N_TOKENS, repetition_penalty=1.2)
        images = [e.numpy() for e in ref.image_embeds(px)]
        streamed: list[str] = []
        got = engine.generate(engine_segments(engine, prompt, images), Sampling(max_tokens=N_TOKENS),
                              on_text=streamed.append)
        assert "".join(streamed).strip() == got.text  # what streams is the answer, nothing more
        specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>"}
        assert not any(s in got.text for s in specials)  # control tokens never render as text
        assert got.tokens == expected[: len(got.tokens)]
        assert len(got.tokens) == len(expected) or got.stopped_by != "max-tokens"


def test_last_logits_match_reference(make_checkpoint, tmp_path, pixels):
    src = make_checkpoint()
    ref = LlavaReference.load(src)
    engine = LlamaEngine(convert_gguf(src, tmp_path / "llm.gguf", "f32"), n_ctx=512, n_threads=2)
    prompt = render([Turn("Describe the abnormality.", images=1)])
    embeds, _ = ref.prompt_embeds(prompt, pixels[:1])
    expected = ref.logits(embeds)[-1].numpy()
    got = engine.prefill(engine_segments(engine, prompt, [ref.image_embeds(pixels[:1])[0].numpy()]))
    # f32 GGUF: the only differences are accumulation order (seen: 1.5e-3 on logits of magnitude ~8)
    assert np.abs(got - expected).max() < 5e-3


def test_context_overflow_is_a_clear_error(make_checkpoint, tmp_path):
    src = make_checkpoint()
    engine = LlamaEngine(convert_gguf(src, tmp_path / "llm.gguf"), n_ctx=64, n_threads=2)
    prompt = render([Turn("Is there a pleural effusion?", images=1)])
    image = np.zeros((16, engine.n_embd), dtype=np.float32)
    # llama.cpp rounds the context up (to 256 here); the check uses what it really allocated
    with pytest.raises(HuatuoError, match=f"context window is {engine.n_ctx}"):
        engine.generate(engine_segments(engine, prompt, [image]), Sampling(max_tokens=engine.n_ctx - 20))
    ok = engine.generate(engine_segments(engine, prompt, [image]), Sampling(max_tokens=4))
    assert ok.prompt_tokens + 4 <= engine.n_ctx


def test_sampling_is_seeded(make_checkpoint, tmp_path):
    engine = LlamaEngine(convert_gguf(make_checkpoint(), tmp_path / "llm.gguf"), n_ctx=256, n_threads=2)
    segs = engine.tokenize("<|user|>\nHello\n<|assistant|>\n")
    hot = Sampling(max_tokens=12, temperature=1.5, top_p=0.95, seed=11)
    a, b = engine.generate(segs, hot), engine.generate(segs, hot)
    c = engine.generate(segs, Sampling(max_tokens=12, temperature=1.5, top_p=0.95, seed=12))
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_prompt_longer_than_a_batch_is_fed_in_parts(make_checkpoint, tmp_path, pixels):
    """Image embeddings and text split across several llama_decode calls give the same logits."""
    src = make_checkpoint()
    gguf = convert_gguf(src, tmp_path / "llm.gguf", "f32")
    ref = LlavaReference.load(src)
    prompt = render([Turn("Describe the abnormality.", images=2)])
    images = [e.numpy() for e in ref.image_embeds(pixels)]
    whole = LlamaEngine(gguf, n_ctx=512, n_threads=2)
    parts = LlamaEngine(gguf, n_ctx=512, n_threads=2, n_batch=5)
    a = whole.prefill(engine_segments(whole, prompt, images))
    b = parts.prefill(engine_segments(parts, prompt, images))
    assert np.abs(a - b).max() < 1e-3
    assert int(a.argmax()) == int(b.argmax())


def test_shared_prefix_is_reused_and_answers_do_not_change(make_checkpoint, tmp_path, pixels):
    """A second question on the same image reuses the cached image positions; the answer is the
    one a fresh engine gives (F32, so no rounding can differ)."""
    src = make_checkpoint()
    gguf = convert_gguf(src, tmp_path / "llm.gguf", "f32")
    ref = LlavaReference.load(src)
    image = [ref.image_embeds(pixels[:1])[0].numpy()]
    first, second = (render([Turn(q, images=1)]) for q in ("Is there a pleural effusion?", "Any fracture?"))
    warm = LlamaEngine(gguf, n_ctx=512, n_threads=2)
    warm.generate(engine_segments(warm, first, image), Sampling(max_tokens=8))
    again = warm.generate(engine_segments(warm, second, image), Sampling(max_tokens=8))
    n_image = image[0].shape[0]
    assert warm.last_prefill_reused >= n_image  # "<|user|>\n" + the image were not computed again
    fresh = LlamaEngine(gguf, n_ctx=512, n_threads=2)
    expected = fresh.generate(engine_segments(fresh, second, image), Sampling(max_tokens=8))
    assert fresh.last_prefill_reused == 0
    assert again.tokens == expected.tokens
    # a different image shares only the text before it
    other = [ref.image_embeds(pixels[1:2])[0].numpy()]
    warm.generate(engine_segments(warm, second, other), Sampling(max_tokens=4))
    assert warm.last_prefill_reused < n_image
