"""The end-to-end oracle the family and vocabulary tests share: `huatuo ask --json` on a bundle gives
exactly the PyTorch reference's greedy tokens for one image and one question (the checkpoint's own
prompt and tokenization on the reference side, the runtime's on the other)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.imaging import load_image


def assert_ask_gives_the_reference_tokens(ref, bundle: Path, image: Path, question: str, n_tokens: int) -> None:
    """`ref`: the bundle checkpoint's reference (`huatuo_convert.reference.load_reference`)."""
    from huatuo_cli.engine.encoder import PREPROCESSOR_NAME
    from huatuo_cli.engine.preprocess import PreprocessConfig

    config = PreprocessConfig.from_file(bundle / "vision" / PREPROCESSOR_NAME) if ref.ckpt.family.vision.fixed_size else None
    expected = ref.answer(question, load_image(image).frames, n_tokens, repetition_penalty=1.2, preprocess_config=config)
    res = CliRunner().invoke(cli, ["ask", "--json", "--model", str(bundle), "--max-tokens", str(n_tokens),
                                   str(image), question])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["prompt_tokens"] == expected.prompt_tokens, question
    assert record["answer"] == expected.text, question
    assert record["tokens"] == len(expected.tokens), question
