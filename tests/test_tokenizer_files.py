"""Issue 19 item 3: the tokenizer files a Qwen2 checkpoint may ship all convert to the same vocabulary.

Qwen2 repositories carry `tokenizer.json`, and some only the `vocab.json` + `merges.txt` pair (with
`tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json`), from which transformers
builds the same fast tokenizer. Both must give the same GGUF vocabulary and pass the parity gate;
a folder with neither is a clear error naming what it holds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.gguf_tokenizer import vocab_for


def _without_tokenizer_json(src: Path, dst: Path) -> Path:
    """The checkpoint with only vocab.json + merges.txt, its added tokens in added_tokens.json."""
    shutil.copytree(src, dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    (dst / "tokenizer.json").unlink()
    (dst / "added_tokens.json").write_text(json.dumps({t["content"]: t["id"] for t in data["added_tokens"]}))
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "rstrip", "normalized",
                                                                        "single_word", "special")}
                                      for t in data["added_tokens"]}
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("markers", ["text", "tokens"])
def test_vocab_and_merges_only_give_the_same_vocabulary_and_pass_the_gate(make_checkpoint, tmp_path, markers):
    src = make_checkpoint(markers=markers)
    pair = _without_tokenizer_json(src, tmp_path / "pair")
    want, got = vocab_for(LlavaCheckpoint.open(src)), vocab_for(LlavaCheckpoint.open(pair))
    assert (got.tokens, got.types, got.merges, got.markers) == (want.tokens, want.types, want.merges, markers)
    res = CliRunner().invoke(cli, ["convert", "gguf", str(pair), str(tmp_path / "llm.gguf"), "--quant", "f16"])
    assert res.exit_code == 0, res.output
    assert re.search(r"tokenizer parity: (\d+)/\1 strings identical", res.output), res.output


def test_no_tokenizer_files_is_a_clear_error(make_checkpoint, tmp_path):
    bare = _without_tokenizer_json(make_checkpoint(), tmp_path / "bare")
    (bare / "vocab.json").unlink()
    res = CliRunner().invoke(cli, ["convert", "gguf", str(bare), str(tmp_path / "llm.gguf"), "--quant", "f16"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "looked for tokenizer.json, or vocab.json with merges.txt" in res.output
    assert "merges.txt" in res.output.split("tokenizer files found:")[1]
