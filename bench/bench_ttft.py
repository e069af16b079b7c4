"""Time to first token for one 512x512 image: huatuo (ONNX or mmproj + llama.cpp) vs PyTorch eager.

Model: a random Qwen2-0.5B-shaped LLM (hidden 896, 24 layers, 14/2 heads, FFN 4864, 151936
embedding rows) under a CLIP-L/336-shaped tower (576 image tokens), built once into bench/out/ as
a verified F16 bundle (`build_bundle`), its LLM requantized to Q4_K_M by llama.cpp beside it.
Image: the 512x512 CT slice 693_UNCR.dcm of pydicom's test data, rendered by huatuo's imaging.

Each engine answers the same prompt (one image + one question), split into three stages:
  encode      image -> image embeddings, preprocessing included
  prefill     prompt tokenized, embeddings spliced, the whole prompt through the LLM to the last logits
  first token choosing the first answer token from those logits (greedy, repetition penalty) and its text
The PyTorch peer follows the official code: transformers' PIL CLIP image processor, LlavaReference
(fp32, eager attention) for the image embeddings and the prompt embeddings, and one forward pass
keeping only the last position's logits (as `generate` does). All engines are loaded at once and
take turns in each of --runs rounds (after a warm-up round); medians are printed, ratios are
against the PyTorch peer in the same run, same thread count.

    PYTHONPATH=$PWD python bench/bench_ttft.py --threads 2 --runs 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import quantized_llm, qwen05b_bundle
from pydicom.data import get_testdata_file

from huatuo_cli.engine.llm import LlamaEngine, Sampling, choose_token
from huatuo_cli.engine.prompt import Turn, render
from huatuo_cli.engine.session import VisionLanguageModel
from huatuo_cli.imaging import load_image

QUESTION = "Is there a pleural effusion?"
STAGES = ("encode", "prefill", "first token")


def timed_stages(steps: list[tuple[str, Callable[[object], object]]]) -> dict[str, float]:
    """Run the steps in order, each fed the previous one's result; seconds per stage."""
    out, value = {}, None
    for name, step in steps:
        t = time.perf_counter()
        value = step(value)
        out[name] = time.perf_counter() - t
    return out


def interleaved_medians(engines: list[tuple[str, list]], runs: int) -> list[tuple[str, dict[str, float]]]:
    """Median stage times per engine, the engines taking turns in every round (round 0: warm-up).

    Turns, not one engine after the other: on a shared machine a burst of load then slows every
    engine alike instead of one of them.
    """
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in engines}
    for round_ in range(runs + 1):
        for name, steps in engines:
            times = timed_stages(steps)
            if round_:
                samples[name].append(times)
    out = []
    for name, _ in engines:
        med = {k: statistics.median(s[k] for s in samples[name]) for k in STAGES}
        med["total"] = statistics.median(sum(s.values()) for s in samples[name])
        out.append((name, med))
    return out


def huatuo_steps(model: VisionLanguageModel, llm: LlamaEngine, image) -> list:
    """The runtime's own pieces, in the order `Conversation.ask` uses them."""
    sampling = Sampling()

    def prefill(embeds):
        segments = [s for s in model.segments([Turn(QUESTION, images=1)], embeds) if len(s)]
        return llm.prefill(segments)

    def first(logits):
        tok = choose_token(logits, [], sampling, np.random.default_rng(0))
        return llm.piece(tok)

    return [("encode", lambda _: model.encode_images([image])), ("prefill", prefill), ("first token", first)]


def pytorch_steps(ref, raw_preprocessor: dict, image) -> list:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(**{k: v for k, v in raw_preprocessor.items() if k != "image_processor_type"})
    prompt = render([Turn(QUESTION, images=1)])

    def encode(_):  # the image is square: LLaVA's expand2square returns it unchanged
        pixels = proc([image], return_tensors="pt")["pixel_values"]
        return ref.image_embeds(pixels)

    def prefill(image_embeds):
        with torch.no_grad():
            ref.image_embeds = lambda _px: image_embeds  # splice the embeddings just computed
            try:
                embeds, _ = ref.prompt_embeds(prompt, torch.zeros(1))
            finally:
                del ref.image_embeds
            return ref.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    def first(scores):  # greedy; the repetition penalty has no history to act on yet
        return ref.tokenizer.decode([int(scores[0].argmax())])

    return [("encode", encode), ("prefill", prefill), ("first token", first)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    bundle = qwen05b_bundle(threads=args.threads)
    q4_path = quantized_llm(bundle, "q4_k_m", threads=args.threads)
    rendered = load_image(get_testdata_file("693_UNCR.dcm", download=False), window="auto")
    image = rendered.frames[0].convert("RGB").resize((512, 512))  # already 512x512; resize is a no-op guard

    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.reference import LlavaReference

    onnx = VisionLanguageModel(bundle, device="cpu", vision="onnx", n_ctx=2048, n_threads=args.threads)
    mmproj = VisionLanguageModel(bundle, device="cpu", vision="mmproj", n_ctx=2048, n_threads=args.threads)
    q4 = LlamaEngine(q4_path, n_ctx=2048, n_threads=args.threads, n_gpu_layers=0)
    ckpt = LlavaCheckpoint.open(bundle.parent / "qwen2-0.5b-clip-l-checkpoint")
    ref = LlavaReference.load(ckpt)
    n_prompt = onnx.llm.prompt_length(onnx.segments([Turn(QUESTION, images=1)], onnx.encode_images([image])))
    engines = [
        ("huatuo: ONNX Runtime CPU fp32 + llama.cpp F16", huatuo_steps(onnx, onnx.llm, image)),
        ("huatuo: ONNX Runtime CPU fp32 + llama.cpp Q4_K_M", huatuo_steps(onnx, q4, image)),
        ("huatuo: llama.cpp mtmd (mmproj f16) + llama.cpp F16", huatuo_steps(mmproj, mmproj.llm, image)),
        ("huatuo: llama.cpp mtmd (mmproj f16) + llama.cpp Q4_K_M", huatuo_steps(mmproj, q4, image)),
        ("PyTorch eager fp32 (LlavaReference, official preprocessing)",
         pytorch_steps(ref, ckpt.preprocessor_config, image)),
    ]
    try:
        rows = interleaved_medians(engines, args.runs)
    finally:
        for engine in (q4, mmproj, onnx):
            engine.close()

    base = rows[-1][1]["total"]
    print(f"# one 512x512 CT slice + one question ({n_prompt} prompt positions, 576 of them image), "
          f"Qwen2-0.5B-shaped LLM, CLIP-L/336-shaped tower; {args.threads} threads (2-core machine), "
          f"median of {args.runs} interleaved rounds after a warm-up round; {platform.machine()}, torch {torch.__version__}")
    print("| engine | encode s | prefill s | first token ms | time to first token s | speed vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in rows:
        print(f"| {name} | {m['encode']:.2f} | {m['prefill']:.2f} | {m['first token'] * 1e3:.1f} | {m['total']:.2f} "
              f"| {base / m['total']:.2f}x |")


if __name__ == "__main__":
    main()
