"""Model cards (issue 15): every field in every card, identification, the card in each bundle.

The cards are data in `models/cards/`; these tests hold them to the issue's list of fields, check
that `huatuo convert all` picks the right one (or says none applies) from real published config
values, that the bundle carries the card hashed like any other file, that a fine-tuned checkpoint
gets a derived card, and that an installed wheel carries the cards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from huatuo_cli.bundles.bundle import load_bundle
from huatuo_cli.bundles.model_card import CARD_NAME, CARD_ROLE, ModelCard, parse_card, read_bundle_card
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from huatuo_convert.families import family_for_architecture
from huatuo_convert.finetune_record import FINETUNE_NAME, read_finetune_record
from huatuo_convert.model_cards import cards_folder, identify, load_cards
from tests.published_configs import PUBLISHED

REPO = Path(__file__).resolve().parent.parent
CARD_FILES = sorted((REPO / "models" / "cards").glob("*.md"))

#: front matter the issue asks for: source repository and paper, licences (with where they are
#: stated), architecture, layout and identifying keys, benchmark source
FRONT_MATTER = [
    "id", "name", "status", "summary", "source_repository", "code_repository", "languages",
    "paper.title", "paper.venue", "paper.arxiv",
    "licence.weights", "licence.weights_source", "licence.code", "licence.code_source",
    "architecture.hf_architecture", "architecture.llm", "architecture.vision_tower", "architecture.projector",
    "architecture.select_layer", "architecture.image_size", "architecture.prompt_format",
    "identify.architecture", "identify.config", "identify.dimensions",
    "layout.files", "benchmarks.source",
]
#: sections with the issue's prose fields, and words each must contain
SECTIONS = {
    "Source and paper": ["EMNLP 2024", "2406.19280"],
    "Licence": ["Weights", "Code"],
    "Architecture": [],
    "Checkpoint layout": ["config.json"],
    "Training data": ["PubMedVision", "1.3 million"],
    "Benchmark figures": [],
    "Intended use": ["qualified reader"],
    "Out-of-scope uses": ["Diagnosis", "Triage"],
    "Known limitations": [],
    "What huatuo's conversion verifies": [],
    "Sources": [],
}
BENCHMARKS = ["VQA-RAD", "SLAKE", "PathVQA", "PMC-VQA", "OmniMedVQA", "MMMU Health & Medicine (test)"]


FINETUNE = {
    "schema": 1, "base_checkpoint": "/models/HuatuoGPT-Vision-7B", "base_config_sha256": "ab" * 32,
    "data": {"train_file": "/data/chest/train.jsonl", "train_records": 480, "eval_file": "/data/chest/eval.jsonl",
             "eval_records": 60, "images": 512, "description": "Chest radiographs with pleural effusion reports"},
    "steps": 120, "epochs": 2.0, "learning_rate": 0.0002, "lora_rank": 16, "lora_alpha": 32,
    "train_projector": True, "eval_loss": 0.8125, "final_train_loss": 0.5, "finished_at": "2026-11-24T21:03:00+00:00",
    "huatuo_version": "0.1.0",
}


def _get(meta: dict, dotted: str):
    value = meta
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"missing {dotted}"
        value = value[part]
    return value


def _config_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- the cards themselves ----------------------------------------------------------------------

def test_the_three_checkpoints_have_cards_and_only_they():
    cards = {c.id: c for c in load_cards()}
    assert set(cards) == {"huatuogpt-vision-7b", "huatuogpt-vision-34b", "huatuogpt-vision-7b-qwen2.5vl"}
    for card_id in ("huatuogpt-vision-7b", "huatuogpt-vision-34b", "huatuogpt-vision-7b-qwen2.5vl"):
        card = cards[card_id]
        assert card.supported
        # the card names an architecture the converter knows, as the same huatuo arch id
        arch = card.meta["identify"]["architecture"]
        family = family_for_architecture(arch)
        assert family.name == card.meta["architecture"]["huatuo_arch"] and family.card == card_id
        assert card.meta["architecture"]["hf_architecture"] == arch


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_every_card_carries_every_field_the_issue_lists(path):
    card = parse_card(path.read_text(encoding="utf-8"), path.name)
    assert card.id == path.stem
    for dotted in FRONT_MATTER:
        value = _get(card.meta, dotted)
        assert value is not None and value != "" and value != [], dotted
    assert card.meta["paper"]["venue"] == "EMNLP 2024"
    for heading, words in SECTIONS.items():
        text = card.section(heading)
        assert text, f"{path.name}: no '## {heading}' section"
        for word in words:
            assert word.lower() in text.lower(), (path.name, heading, word)
    limitations = card.section("Known limitations").lower()
    assert "language" in limitations
    if card.supported and card.meta["benchmarks"]["metric"] == "not applicable":
        # supported, no published figures (HuatuoGPT-Vision-7B-Qwen2.5VL): said so, none borrowed
        assert "2-d" in limitations and "6 images" in limitations
        assert "not stated" in card.section("Benchmark figures").lower()
        assert not any(name in card.meta["benchmarks"] for name in BENCHMARKS)
        assert card.meta["identify"]["config"] and card.meta["identify"]["dimensions"]
    elif card.supported:
        # single 2-D images, 6 images at most; figures with their source; fixed image geometry
        assert "2-d" in limitations and "6 images" in limitations
        for name in BENCHMARKS:
            assert isinstance(card.meta["benchmarks"][name], float), name
        assert "README" in card.meta["benchmarks"]["source"]
        assert isinstance(card.meta["architecture"]["select_layer"], int)
        assert card.meta["architecture"]["image_size"] == 336
        assert card.meta["identify"]["config"] and card.meta["identify"]["dimensions"]
    else:
        assert "not supported yet" in card.section("Summary").lower()
        assert "not confirmed" in card.section("Benchmark figures").lower()


def test_a_card_without_front_matter_or_with_bad_toml_is_refused():
    with pytest.raises(HuatuoError, match="front matter"):
        parse_card("# just prose\n", "x.md")
    with pytest.raises(HuatuoError, match="not valid TOML"):
        parse_card("+++\nid = \n+++\n", "x.md")
    with pytest.raises(HuatuoError, match="lacks 'summary'"):
        parse_card('+++\nid = "a"\nname = "b"\nstatus = "supported"\n+++\n', "x.md")


# --- identification ------------------------------------------------------------------------------

@pytest.mark.parametrize("card_id", sorted(PUBLISHED))
def test_published_configs_are_identified_exactly(tmp_path, card_id):
    match = identify(_config_folder(tmp_path, PUBLISHED[card_id]))
    assert match.kind == "exact" and match.card is not None and match.card.id == card_id, match.reason


@pytest.mark.parametrize("arch, card_id", [("llava-qwen2", "huatuogpt-vision-7b"), ("llava-llama", "huatuogpt-vision-34b")])
def test_synthetic_checkpoints_get_the_card_of_their_layout(make_checkpoint, arch, card_id):
    match = identify(make_checkpoint(arch=arch))
    assert match.kind == "synthetic" and match.card is not None and match.card.id == card_id, match.reason


@pytest.mark.parametrize("change", [{"hidden_size": 4096}, {"num_hidden_layers": 32}, {"mm_projector_type": "linear"},
                                    {"image_aspect_ratio": "anyres"}, {"architectures": ["LlavaMistralForCausalLM"]}])
def test_an_unknown_derivative_gets_no_card(tmp_path, change):
    match = identify(_config_folder(tmp_path, {**PUBLISHED["huatuogpt-vision-7b"], **change}))
    assert match.card is None and match.kind == "none"
    assert match.reason.startswith("no card applies") and "unknown fine-tune or derivative" in match.reason
    assert str(next(iter(change.values()))).strip("[]'") in match.reason  # names what differs


@pytest.mark.parametrize("text", ["{broken", "[]"])
def test_a_malformed_config_is_a_clear_error(tmp_path, text):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    res = CliRunner().invoke(cli, ["convert", "all", str(folder), str(tmp_path / "b")])
    assert res.exit_code == 1 and "config.json" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_a_qwen25vl_config_alone_is_refused_before_any_work(tmp_path):
    """The Qwen2.5-VL card is supported now; a folder with its architecture but no M-RoPE sections or
    weights is one clear line, and nothing is written."""
    src = _config_folder(tmp_path, {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"})
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "b")])
    assert res.exit_code == 1, res.output
    assert "no M-RoPE sections" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --- the card in a bundle ----------------------------------------------------------------------------

def test_a_synthetic_7b_bundle_carries_its_card_in_the_manifest(tiny_bundle):
    bundle = load_bundle(tiny_bundle)  # verifies every file, the card included
    entry = bundle.manifest.file(CARD_ROLE)
    assert entry is not None and entry.path == CARD_NAME
    card = read_bundle_card(tiny_bundle, bundle.manifest)
    assert isinstance(card, ModelCard) and card.id == "huatuogpt-vision-7b"
    assert card.meta["bundle"]["quantization"] == bundle.manifest.quantization == "f16"
    assert "synthetic" in card.meta["bundle"]["match"]
    assert bundle.manifest.extra["model_card"] == {"card": "huatuogpt-vision-7b", "match": "synthetic",
                                                   "reason": card.meta["bundle"]["match"]}
    measured = card.section("This bundle")
    assert "quantization **f16**" in measured and "end to end" in measured and "min cosine" in measured
    res = CliRunner().invoke(cli, ["models", "info", str(tiny_bundle)])
    assert res.exit_code == 0, res.output
    assert "model card:    HuatuoGPT-Vision-7B" in res.output and card.meta["summary"] in res.output
    assert "licence:     weights Apache-2.0" in res.output


def test_models_info_refuses_a_changed_card(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / CARD_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / CARD_NAME).write_bytes(bytes(data))
    res = CliRunner().invoke(cli, ["models", "info", str(copy)])
    assert res.exit_code == 1 and "MODEL_CARD.md: sha256 differs" in res.output, res.output


def batch_report(bundle: Path, tmp_path: Path) -> str:
    """report.html of a one-study batch with `bundle`, after checking the card copied beside it."""
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "ct.dcm")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["batch", str(folder), "--out", str(out), "--model", str(bundle),
                                   "-q", "Describe.", "--max-tokens", "2"])
    assert res.exit_code == 0, res.output
    assert (out / CARD_NAME).read_bytes() == (bundle / CARD_NAME).read_bytes()
    return (out / "report.html").read_text()


def test_batch_report_links_to_the_card(tiny_bundle, tmp_path):
    assert f'<a href="{CARD_NAME}">HuatuoGPT-Vision-7B</a>' in batch_report(tiny_bundle, tmp_path)


UNIDENTIFIED_SENTENCE = ("not identified as a published checkpoint: intended use and limitations are the provider's "
                         "to state")


@pytest.fixture(scope="module")
def unidentified(make_checkpoint, tmp_path_factory) -> tuple[Path, Path, str]:
    """Issue 19 item 4: `convert all` of an unknown derivative, a checkpoint of the 7B layout that is
    neither synthetic nor of the published dimensions. (source folder, bundle, what convert all printed)."""
    root = tmp_path_factory.mktemp("derivative")
    src = root / "derivative"
    shutil.copytree(make_checkpoint(), src)
    config = json.loads((src / "config.json").read_text())
    del config["huatuo_synthetic"]  # a real checkpoint of the 7B layout with other dimensions
    (src / "config.json").write_text(json.dumps(config))
    assert identify(src).kind == "none"
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(root / "b"), "--quant", "f16", "--no-mmproj"])
    assert res.exit_code == 0, res.output
    return src, root / "b", res.output


def test_an_unknown_derivative_bundle_gets_a_card_that_says_so(unidentified):
    """No published card applies, so the bundle's card says what was found and measured and leaves
    intended use to the provider."""
    src, path, _ = unidentified
    bundle = load_bundle(path)  # verifies every file, the card included
    assert bundle.manifest.extra["model_card"]["card"] is None
    assert bundle.manifest.extra["model_card"]["match"] == "none"
    card = read_bundle_card(bundle.root, bundle.manifest)  # listed and hash-checked like any card
    assert card is not None and card.status == "unidentified"
    assert UNIDENTIFIED_SENTENCE in card.text.lower()
    assert card.meta["summary"].lower().rstrip(".") == UNIDENTIFIED_SENTENCE
    assert card.meta["bundle"]["match"] == bundle.manifest.extra["model_card"]["reason"]
    assert bundle.manifest.extra["model_card"]["reason"] in card.body  # why no published card applies
    # the architecture found and the source config.json's own hash
    assert card.meta["bundle"]["hf_architecture"] == "LlavaQwen2ForCausalLM"
    assert card.meta["bundle"]["architecture"] == bundle.manifest.architecture == "llava-qwen2"
    config_sha256 = hashlib.sha256((src / "config.json").read_bytes()).hexdigest()
    assert card.meta["bundle"]["source_config_sha256"] == config_sha256 == bundle.manifest.source["config_sha256"]
    assert config_sha256 in card.section("What was found")
    # the fidelity the conversion measured, as the manifest records it
    measured = card.section("This bundle")
    fidelity = bundle.manifest.fidelity
    assert "quantization **f16**" in measured
    assert f"top-1 {fidelity['llm']['logits']['top1_agreement']:.2%}" in measured and "tokenizer parity:" in measured
    vision = fidelity["vision"]["files"]["vision-fp32.onnx"]
    assert f"vision-fp32.onnx: min cosine {vision['min_cosine']:.6f}" in measured
    assert "end to end" in measured and "identical" in measured
    # no claim taken from a published card
    assert "Intended use" not in card.text and "EMNLP" not in card.text and "licence" not in card.meta
    assert "benchmarks" not in card.meta and "PubMedVision" not in card.text and "qualified reader" not in card.text


def test_convert_all_prints_the_card_decision_once(unidentified):
    """The decision was printed twice (a `- model card:` progress line and the summary); now only in the summary."""
    output = unidentified[2]
    assert output.count("model card:") == 1, output
    assert output.count("unknown fine-tune or derivative") == 1, output
    (line,) = [line for line in output.splitlines() if "model card:" in line]
    assert line.startswith("  model card: MODEL_CARD.md for an unidentified checkpoint: no card applies"), line


def test_models_info_shows_the_unidentified_card(unidentified):
    res = CliRunner().invoke(cli, ["models", "info", str(unidentified[1])])
    assert res.exit_code == 0, res.output
    assert "model card:    Unidentified llava-qwen2 checkpoint (MODEL_CARD.md, unidentified)" in res.output
    assert "identified:  no card applies" in res.output
    assert "intended use: not stated" in res.output and "draft answers for a qualified reader" not in res.output
    assert "licence:" not in res.output


def test_batch_report_links_to_the_unidentified_card(unidentified, tmp_path):
    html = batch_report(unidentified[1], tmp_path)
    assert f'<a href="{CARD_NAME}">Unidentified llava-qwen2 checkpoint</a>' in html
    assert "Not identified as a published checkpoint" in html


@pytest.mark.asyncio
async def test_the_tui_shows_the_unidentified_card(unidentified, tmp_path):
    from huatuo_cli.tui.app import make_app
    from tests.tui_helpers import screen_text, settle, studies_folder

    app = make_app(studies_folder(tmp_path / "studies"), model=unidentified[1], graphics="halfblock",
                   export_dir=tmp_path)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        await pilot.press("c")
        await pilot.pause()
        text = screen_text(app)
    assert "Unidentified llava-qwen2 checkpoint" in text and "intended use: not stated" in text, text
    assert "Traceback" not in text and "draft answers" not in text


# --- fine-tuned checkpoints ----------------------------------------------------------------------------

def test_a_fine_tuned_checkpoint_gets_a_card_derived_from_its_base(make_checkpoint, tmp_path):
    src = tmp_path / "merged"
    shutil.copytree(make_checkpoint(), src)
    (src / FINETUNE_NAME).write_text(json.dumps(FINETUNE))
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "b"), "--quant", "f16", "--no-mmproj"])
    assert res.exit_code == 0, res.output
    assert "fine-tune of HuatuoGPT-Vision-7B" in res.output
    assert res.output.count("model card:") == 1, res.output  # the decision, once (summary only)
    bundle = load_bundle(tmp_path / "b")
    card = read_bundle_card(bundle.root, bundle.manifest)
    assert card is not None and card.id == "huatuogpt-vision-7b"
    assert card.meta["bundle"]["name"] == "Fine-tune of HuatuoGPT-Vision-7B"
    assert "\n# Fine-tune of HuatuoGPT-Vision-7B\n" in card.body
    tuning = card.section("Fine-tuning")
    assert "Chest radiographs with pleural effusion reports" in tuning
    assert "steps: 120" in tuning and "evaluation loss: 0.8125" in tuning and "480 records" in tuning
    assert "/data/chest" not in card.text  # file names only, no server paths
    assert card.meta["bundle"]["fine_tuning"]["eval_loss"] == 0.8125
    assert bundle.manifest.extra["model_card"]["match"] == "fine-tune"
    res = CliRunner().invoke(cli, ["models", "info", str(tmp_path / "b")])
    assert "fine-tuned:  120 steps on 480 records, eval loss 0.8125" in res.output, res.output


def test_a_finetune_record_without_evaluation_is_accepted(tmp_path):
    record = {**FINETUNE, "eval_loss": None, "data": {**FINETUNE["data"], "eval_file": None, "eval_records": None}}
    (tmp_path / FINETUNE_NAME).write_text(json.dumps(record))
    parsed = read_finetune_record(tmp_path)
    assert parsed is not None and parsed.eval_loss is None and parsed.steps == 120


@pytest.mark.parametrize("broken, named", [
    ("{not json", "not valid JSON"),
    (json.dumps({**FINETUNE, "schema": 2}), "schema 2"),
    (json.dumps({k: v for k, v in FINETUNE.items() if k != "steps"}), "'steps' is missing"),
    (json.dumps({**FINETUNE, "steps": "120"}), "'steps' must be an integer"),
    (json.dumps({**FINETUNE, "train_projector": 1}), "'train_projector' must be true or false"),
    (json.dumps({**FINETUNE, "lora_rank": True}), "'lora_rank' must be an integer, not a boolean"),
    (json.dumps({**FINETUNE, "final_train_loss": None}), "'final_train_loss' must not be null"),
    (json.dumps({**FINETUNE, "data": {**FINETUNE["data"], "train_records": -1}}), "'train_records' must not be negative"),
    (json.dumps({**FINETUNE, "data": {k: v for k, v in FINETUNE["data"].items() if k != "images"}}), "'images' is missing"),
    (json.dumps({**FINETUNE, "finished_at": "yesterday"}), "'finished_at' is not an ISO-8601"),
    (json.dumps([FINETUNE]), "must hold a JSON object"),
])
def test_a_malformed_finetune_record_stops_the_conversion_naming_the_field(make_checkpoint, tmp_path, broken, named):
    src = tmp_path / "merged"
    shutil.copytree(make_checkpoint(), src)
    (src / FINETUNE_NAME).write_text(broken)
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "b")])
    assert res.exit_code == 1 and named in res.output and FINETUNE_NAME in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # nothing converted, nothing left


# --- packaging ------------------------------------------------------------------------------------------

def test_an_installed_wheel_carries_the_cards(tmp_path):
    """The cards are package data: a wheel built from the tree installs them under huatuo_convert/cards."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("huatuo_cli", "convert", "models"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.gguf", "*.onnx"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "w"),
                          str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "w").glob("huatuo_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"huatuo_convert/cards/{p.name}" for p in CARD_FILES} <= names
    target = tmp_path / "site"
    subprocess.run(pip + ["install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import huatuo_convert.model_cards as m; "
             "print(m.__file__); print(m.cards_folder()); print(sorted(c.id for c in m.load_cards()))")
    done = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr
    module, folder, ids = done.stdout.splitlines()
    assert module.startswith(str(target)) and folder == str(target / "huatuo_convert" / "cards")
    assert ids == str(sorted(c.id for c in load_cards()))
    assert cards_folder() != Path(folder)  # this checkout reads models/cards itself
