"""The end-to-end oracle the family and vocabulary tests share: `huatuo ask --json` on a bundle gives
exactly the PyTorch reference's greedy tokens for one image and one question (cli.py's prompt and
tokenization on the reference side, the runtime's on the other)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.engine.encoder import ImageEncoder
from huatuo_cli.engine.preprocess import preprocess
from huatuo_cli.engine.prompt import Turn, render
from huatuo_cli.imaging import load_image


def assert_ask_gives_the_reference_tokens(ref, bundle: Path, image: Path, question: str, n_tokens: int) -> None:
    """`ref`: a loaded `huatuo_convert.reference.LlavaReference` of the bundle's checkpoint."""
    config = ImageEncoder.from_folder(bundle / "vision", device="cpu").config
    pixels = torch.from_numpy(preprocess(load_image(image).frames, config))
    embeds, _ = ref.prompt_embeds(render([Turn(question, images=1)]), pixels)
    expected = ref.greedy(embeds, n_tokens, repetition_penalty=1.2)
    res = CliRunner().invoke(cli, ["ask", "--json", "--model", str(bundle), "--max-tokens", str(n_tokens),
                                   str(image), question])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["prompt_tokens"] == embeds.shape[1], question
    assert record["answer"] == ref.tokenizer.decode(expected).strip(), question
    assert record["tokens"] == len(expected), question
