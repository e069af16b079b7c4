"""Every registered model family, end to end: `convert synth` -> `convert all` -> `ask`, greedy tokens
equal to the PyTorch reference's, and a manifest that tells the runtime what the family needs.

A new family is a new module in `huatuo_convert.families`, its card, and nothing here: this suite
runs it because the registry lists it (docs/architecture.md "How to add a model family").
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from huatuo_cli.bundles.bundle import load_bundle
from huatuo_cli.cli import cli
from huatuo_cli.engine.llm import POSITION_SCHEMES
from huatuo_cli.engine.preprocess import PREPROCESSING
from huatuo_cli.engine.prompt import PROMPT_FORMATS, prompt_format
from huatuo_cli.errors import HuatuoError
from huatuo_convert.families import all_families
from huatuo_convert.families.base import ModelFamily
from huatuo_convert.model_cards import load_cards
from huatuo_convert.reference import load_reference
from tests.reference_answers import assert_ask_gives_the_reference_tokens

REPO = Path(__file__).resolve().parent.parent
FAMILIES = all_families()
QUESTION = "Is there a pleural effusion?"
N_TOKENS = 10


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """family name -> (checkpoint, bundle), each made through the CLI as an admin would."""
    built: dict[str, tuple[Path, Path]] = {}

    def make(family: ModelFamily) -> tuple[Path, Path]:
        if family.name not in built:
            root = tmp_path_factory.mktemp(family.name)
            src, bundle = root / "checkpoint", root / "bundle"
            runner = CliRunner()
            res = runner.invoke(cli, ["convert", "synth", str(src), "--arch", family.name, "--vision-layout", "folder"])
            assert res.exit_code == 0, res.output
            res = runner.invoke(cli, ["convert", "all", str(src), str(bundle), "--quant", "f16", "--no-mmproj"])
            assert res.exit_code == 0, res.output
            built[family.name] = src, bundle
        return built[family.name]

    return make


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "scan.png"
    Image.fromarray(np.random.default_rng(23).integers(0, 255, (72, 60), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_synth_convert_ask_gives_the_reference_tokens(converted, scan, family):
    src, bundle = converted(family)
    assert_ask_gives_the_reference_tokens(load_reference(src), bundle, scan, QUESTION, N_TOKENS)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_manifest_carries_what_the_runtime_needs_of_the_family(converted, family):
    src, bundle = converted(family)
    manifest = load_bundle(bundle).manifest
    assert manifest.architecture == family.name
    assert manifest.source["hf_architecture"] == family.hf_architecture
    assert manifest.prompt_format == family.prompt_format
    assert manifest.llm["positions"] == family.positions and manifest.llm["family"] == family.llm.gguf_arch
    assert manifest.vision["preprocess"] == family.vision.preprocess
    if family.vision.fixed_size:
        tower = json.loads((src / "vit/clip_vit_large_patch14_336/config.json").read_text())["vision_config"]
        assert manifest.vision["tokens_per_image"] == family.vision.tokens_per_image(tower) == (56 // 14) ** 2
    else:  # the image keeps its aspect ratio: the bundle carries the checkpoint's pixel limits instead
        limits = json.loads((src / "preprocessor_config.json").read_text())
        assert manifest.vision["tokens_per_image"] is None
        assert (manifest.vision["min_pixels"], manifest.vision["max_pixels"]) == (limits["min_pixels"], limits["max_pixels"])
    assert manifest.extra["model_card"]["card"] == family.card
    assert manifest.fidelity["llm"]["tolerances"] == dict(family.llm_tolerances["f16"])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_runtime_supports_what_each_family_declares(family):
    assert family.prompt_format in PROMPT_FORMATS
    assert family.positions in POSITION_SCHEMES
    assert family.vision.preprocess in PREPROCESSING
    cards = {card.id: card for card in load_cards()}
    assert family.card in cards and cards[family.card].supported
    assert cards[family.card].meta["identify"]["architecture"] == family.hf_architecture


def _modules_naming(pattern: str, flags: int = 0) -> list[str]:
    found = []
    for package in ("huatuo_cli", "convert"):
        for path in sorted((REPO / package).rglob("*.py")):
            if re.search(pattern, path.read_text(encoding="utf-8"), flags):
                found.append(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_a_family_is_named_in_at_most_three_modules(family):
    """Issue 20: no family string tested outside its declaration (a help example may name one)."""
    names = (family.name, family.hf_architecture, family.model_type, family.text_architecture)
    modules = _modules_naming("|".join(re.escape(n) for n in names))
    assert f"convert/families/{re.sub('[-.]', '_', family.name)}.py" in modules
    assert len(modules) <= 3, modules


def test_the_issue_check_for_the_7b_language_model():
    """`grep -rliE 'qwen2' huatuo_cli convert --include='*.py'`: at most three modules name the 7B's
    language model. Qwen2.5-VL and Qwen2-VL (the third family and its runtime parts, named `qwen2.5`,
    `qwen2_5`, `qwen2-vl`, `Qwen2VL`...) are other names and are not counted."""
    modules = _modules_naming(r"qwen2(?![._]?5|[-_]?vl)", re.IGNORECASE)
    assert len(modules) <= 3, modules


def test_old_bundles_without_the_family_keys_still_answer(tiny_bundle, tmp_path, scan):
    """Bundles converted before the manifest named positions and preprocessing mean LLaVA-1.5's."""
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / "manifest.json").read_text())
    del data["llm"]["positions"], data["vision"]["preprocess"]
    (old / "manifest.json").write_text(json.dumps(data))
    res = CliRunner().invoke(cli, ["ask", "--model", str(old), "--max-tokens", "4", str(scan), QUESTION])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("section,key,value,message", [
    ("llm", "positions", "alibi-2d", "position scheme 'alibi-2d' is not supported by this huatuo"),
    ("vision", "preprocess", "dynamic-tiles", "image preprocessing 'dynamic-tiles' is not supported"),
])
def test_a_bundle_needing_what_this_runtime_lacks_is_refused(tiny_bundle, tmp_path, scan, section, key, value, message):
    newer = tmp_path / "newer"
    shutil.copytree(tiny_bundle, newer)
    data = json.loads((newer / "manifest.json").read_text())
    data[section][key] = value
    (newer / "manifest.json").write_text(json.dumps(data))
    res = CliRunner().invoke(cli, ["ask", "--model", str(newer), "--max-tokens", "4", str(scan), QUESTION])
    assert res.exit_code == 1 and message in res.output and "upgrade huatuo-cli" in res.output
    assert "Traceback" not in res.output


def test_an_unknown_prompt_format_is_refused_by_name():
    """(A manifest cannot claim another format than its GGUF's: `check_metadata` refuses that first.)"""
    with pytest.raises(HuatuoError, match="prompt format 'chatml' is not supported by this huatuo"):
        prompt_format("chatml")
