"""Follow-up questions: the second answer sees the first turn, exactly as the reference would."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from huatuo_cli.cli import cli
from huatuo_cli.engine.llm import Sampling
from huatuo_cli.engine.preprocess import preprocess
from huatuo_cli.engine.prompt import Turn, render
from huatuo_cli.engine.session import Conversation, VisionLanguageModel
from huatuo_convert.reference import LlavaReference


def gradient(size: int = 80) -> Image.Image:
    x = np.linspace(0, 255, size, dtype=np.float32)
    return Image.fromarray(np.stack([np.add.outer(x, x) / 2] * 3, -1).astype(np.uint8))


def test_follow_up_matches_reference_on_the_whole_history(tiny_bundle, make_checkpoint):
    model = VisionLanguageModel(tiny_bundle, device="cpu", n_ctx=512)
    ref = LlavaReference.load(make_checkpoint())
    image = gradient()
    conv = Conversation(model, images=[image])
    sampling = Sampling(max_tokens=12)
    first = conv.ask("Is there a pleural effusion?", sampling)
    second = conv.ask("Where exactly?", sampling)
    assert model.llm.last_prefill_reused > model.bundle.manifest.vision["tokens_per_image"]  # history not recomputed
    assert [t.answer for t in conv.turns] == [first.text, second.text]
    assert conv.turns[0].images == 1 and conv.turns[1].images == 0
    # the reference, given the same rendered two-turn prompt and the same image, answers the same
    prompt = render([Turn("Is there a pleural effusion?", images=1, answer=first.text), Turn("Where exactly?")])
    pixels = torch.from_numpy(preprocess([image], model.encoder._onnx.config))
    embeds, _ = ref.prompt_embeds(prompt, pixels)
    assert second.prompt_tokens == embeds.shape[1]
    assert ref.greedy(embeds, 12, repetition_penalty=1.2)[: len(second.tokens)] == second.tokens
    model.close()


def test_ask_interactive_follow_ups_on_the_cli(tiny_bundle):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm", download=False)
    res = CliRunner().invoke(cli, ["ask", "-i", "--json", "--model", str(tiny_bundle), "--max-tokens", "6", ct,
                                   "Describe."], input="And the liver?\n\n")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["question"] for r in records] == ["Describe.", "And the liver?"]
    assert records[1]["prompt_tokens"] > records[0]["prompt_tokens"]
