"""The third family, HuatuoGPT-Vision-7B-Qwen2.5VL (issue 24), against transformers' own Qwen2.5-VL.

Tiny random `Qwen2_5_VLForConditionalGeneration` checkpoints written by transformers itself (both
config generations, both tensor-name styles, the real Qwen2 vocabulary with Qwen2.5-VL's added
tokens) go through `huatuo convert all` and `huatuo ask`; every part is compared with transformers:
its PIL image processor, its vision bookkeeping, its `get_rope_index`, its tower and its `generate`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pydicom.data import get_testdata_file
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from huatuo_cli.cli import cli
from huatuo_cli.engine.llm import ImageEmbeds, prompt_positions
from huatuo_cli.engine.qwen_vision import QwenVisionConfig, graph_inputs, patchify
from huatuo_cli.imaging import load_image
from huatuo_convert.families import family_named
from huatuo_convert.qwen_reference import QwenVLReference
from huatuo_convert.qwen_synth import write_qwen_vl_checkpoint
from huatuo_convert.synth import SynthSpec
from tests.real_vocab import QWEN2, vocab_dir
from tests.reference_answers import assert_ask_gives_the_reference_tokens

FAMILY = family_named("qwen2.5-vl")
QUESTION = "Is there a pleural effusion?"
N_TOKENS = 10
#: real DICOM of several sizes and aspect ratios: square CT, landscape RGB ultrasound, a tall NM
#: image (4:1) and a large radiograph past the pixel limit
DICOM = ("CT_small.dcm", "US1_UNCR.dcm", "JPEG2000.dcm", "RG1_UNCR.dcm")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """make(config_style, key_style) -> a tiny checkpoint with the real Qwen2 vocabulary, built once each."""
    built: dict[tuple[str, str], Path] = {}
    spec = replace(SynthSpec(arch=FAMILY.name), vocab_from=str(vocab_dir() / QWEN2))

    def make(config_style: str = "4.x", key_style: str = "plain") -> Path:
        if (config_style, key_style) not in built:
            out = tmp_path_factory.mktemp("qwen") / f"ckpt-{config_style}-{key_style}"
            out.mkdir()
            write_qwen_vl_checkpoint(out, spec, config_style=config_style, key_style=key_style)
            built[config_style, key_style] = out
        return built[config_style, key_style]

    return make


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    """make(config_style, key_style) -> `huatuo convert all` (F16: every gate must pass), built once each."""
    built: dict[tuple[str, str], Path] = {}

    def make(config_style: str = "4.x", key_style: str = "plain") -> Path:
        if (config_style, key_style) not in built:
            out = tmp_path_factory.mktemp("qwen-bundle") / f"bundle-{config_style}-{key_style}"
            res = CliRunner().invoke(cli, ["convert", "all", str(checkpoint(config_style, key_style)), str(out),
                                           "--quant", "f16"])
            assert res.exit_code == 0, res.output
            built[config_style, key_style] = out
        return built[config_style, key_style]

    return make


@pytest.fixture(scope="module")
def reference(checkpoint):
    return QwenVLReference.load(checkpoint())


# -- the image processor and the tower's bookkeeping, against transformers ---------------------------------

@pytest.mark.parametrize("style", ["4.x", "5.x"])
@pytest.mark.parametrize("size,mode", [((64, 48), "RGB"), ((300, 120), "RGB"), ((20, 900), "L"), ((1000, 800), "RGB"),
                                       ((28, 28), "RGB"), ((13, 7), "L"), ((517, 333), "RGBA")])
def test_preprocessing_is_transformers_pil_processor(style, size, mode):
    limits = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 200}
    raw = limits if style == "4.x" else {"size": {"shortest_edge": limits["min_pixels"], "longest_edge": limits["max_pixels"]}}
    image = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)).convert(mode)
    want = Qwen2VLImageProcessorPil(**limits)(images=[image], return_tensors="np")
    pixels, grid = patchify(image, QwenVisionConfig.from_dict(raw))
    assert [list(grid)] == want["image_grid_thw"].tolist()
    np.testing.assert_array_equal(pixels, want["pixel_values"])


@pytest.mark.parametrize("grid", [(1, 4, 4), (1, 8, 22), (1, 24, 30), (1, 64, 2), (1, 16, 16), (1, 34, 18)])
def test_vision_index_inputs_are_transformers_own(grid):
    config = QwenVisionConfig.from_dict({}, window_size=112)
    got = graph_inputs(grid, config)
    thw = torch.tensor([grid])
    np.testing.assert_array_equal(got["position_ids"], get_vision_position_ids(thw, 2).numpy())
    window_index, cu = get_vision_window_index(thw, spatial_merge_size=2, window_size=112, patch_size=14)
    np.testing.assert_array_equal(got["window_index"], window_index.numpy())
    np.testing.assert_array_equal(got["window_index"][got["reverse_index"]], np.arange(len(window_index)))
    # the window partition: patches of one window are consecutive and fill cu_window_seqlens' spans
    bounds = np.flatnonzero(np.diff(got["window_ids"])) + 1
    assert [0, *bounds.tolist(), len(got["window_ids"])] == cu.tolist()


def test_mrope_positions_are_transformers_get_rope_index(reference):
    """Text, a wide image, text, a tall image, text: huatuo's positions are get_rope_index's, and the
    answer's first position is one past the largest (transformers' rope_deltas)."""
    images = [Image.new("RGB", (200, 90)), Image.new("RGB", (60, 150))]
    prompt = FAMILY_FORMAT_RENDER([("Compare the two views.", 2)])
    ids, _, grid = reference.input_ids(prompt, images)
    types = (torch.tensor([ids]) == reference.image_token_id).int()
    want, delta = reference.model.model.get_rope_index(torch.tensor([ids]), mm_token_type_ids=types, image_grid_thw=grid)
    chunks = reference.tokenizer.encode_chunks(prompt)
    segments = [chunks[0]]
    for (_, h, w), chunk in zip(grid.tolist(), chunks[1:], strict=True):
        segments += [ImageEmbeds(np.zeros((h * w // 4, 1)), (h // 2, w // 2)), chunk]
    got = prompt_positions(segments, "mrope")
    np.testing.assert_array_equal(got[:, :3].T, want[:, 0].numpy())
    assert int(got[:, :3].max()) + 1 == len(ids) + int(delta)


def FAMILY_FORMAT_RENDER(turns: list[tuple[str, int]]) -> str:  # noqa: N802 - a render helper named for what it is
    from huatuo_cli.engine.prompt import Turn, prompt_format

    return prompt_format(FAMILY.prompt_format).render([Turn(q, images=n) for q, n in turns])


# -- conversion and answers -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("config_style,key_style", [("4.x", "plain"), ("5.x", "plain"), ("4.x", "nested"), ("5.x", "nested")])
def test_both_config_generations_and_key_styles_convert_and_answer_as_transformers(
        checkpoint, bundle, config_style, key_style):
    src = checkpoint(config_style, key_style)
    raw = json.loads((src / "config.json").read_text())
    assert ("text_config" in raw) == (config_style == "5.x")
    out = bundle(config_style, key_style)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"] == FAMILY.name and manifest["llm"]["positions"] == "mrope"
    assert manifest["fidelity"]["end_to_end"]["identical"] is True
    assert manifest["fidelity"]["prompt"]["chat_template"] == "identical"
    assert manifest["fidelity"]["llm"]["tokenizer"]["mismatches"] == []
    scan = Path(get_testdata_file("CT_small.dcm", download=False))
    assert_ask_gives_the_reference_tokens(QwenVLReference.load(src), out, scan, QUESTION, N_TOKENS)


@pytest.mark.slow
def test_dicom_of_several_sizes_and_aspect_ratios_give_the_reference_tokens(bundle, reference):
    counts = set()
    for name in DICOM:
        path = Path(get_testdata_file(name, download=False))
        assert_ask_gives_the_reference_tokens(reference, bundle(), path, QUESTION, N_TOKENS)
        frames = load_image(path).frames
        counts.add(reference.answer(QUESTION, frames, 1).prompt_tokens)
    assert len(counts) == len(DICOM)  # every size took its own number of image positions


@pytest.mark.slow
def test_a_follow_up_reuses_the_cache_and_answers_as_a_fresh_prefill(bundle):
    from huatuo_cli.engine.llm import Sampling
    from huatuo_cli.engine.session import Conversation, VisionLanguageModel

    image = load_image(Path(get_testdata_file("US1_UNCR.dcm", download=False))).frames
    sampling = Sampling(max_tokens=8)
    model = VisionLanguageModel(bundle(), device="cpu")
    try:
        talk = Conversation(model, images=image)
        talk.ask(QUESTION, sampling)
        follow_up = talk.ask("How large is it?", sampling)
        assert model.llm.last_prefill_reused > 0  # the image and the first turn were not decoded again
        fresh = VisionLanguageModel(bundle(), device="cpu")
        try:
            again = Conversation(fresh, images=image, turns=list(talk.turns[:-1]))
            assert again.ask("How large is it?", sampling).tokens == follow_up.tokens
            assert fresh.llm.last_prefill_reused == 0
        finally:
            fresh.close()
    finally:
        model.close()


def test_linear_positions_would_not_be_faithful(bundle, reference):
    """The check has teeth: the same bundle fed with one position per entry (LLaVA's numbering)
    answers differently from transformers; with M-RoPE it answers as transformers does."""
    from huatuo_cli.engine.encoder import FP32_NAME, QwenImageEncoder
    from huatuo_cli.engine.llm import LlamaEngine
    from huatuo_cli.engine.session import interleave

    out = bundle()
    image = [Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 200, 3), dtype=np.uint8))]
    prompt = FAMILY_FORMAT_RENDER([(QUESTION, 1)])
    want = reference.logits(prompt, image)[-1]
    config = QwenVisionConfig.from_file(out / "vision" / "preprocessor_config.json")
    embeds = QwenImageEncoder(out / "vision" / FP32_NAME, config, device="cpu").encode(image)
    deltas = {}
    for scheme in ("mrope", "linear"):
        engine = LlamaEngine(next(out.glob("llm-*.gguf")), n_ctx=512, positions=scheme)
        deltas[scheme] = float(np.abs(engine.prefill(interleave(engine.tokenize(prompt), embeds)) - want).max())
        engine.close()
    scale = float(np.abs(want).max())
    assert deltas["mrope"] < 5e-3 * scale < deltas["linear"]


# -- gates that refuse ------------------------------------------------------------------------------------

def test_a_chat_template_other_than_the_format_is_refused(checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(checkpoint(), src)
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = json.loads((src / name).read_text())
        data["chat_template"] = data["chat_template"].replace("You are a helpful assistant.", "You are a radiologist.")
        (src / name).write_text(json.dumps(data))
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "out"), "--quant", "f16"])
    assert res.exit_code == 1 and "chat template renders a conversation differently" in res.output
    assert not (tmp_path / "out").exists() and "Traceback" not in res.output


def test_the_vision_gate_refuses_a_graph_with_the_wrong_windows(checkpoint, tmp_path, reference):
    """Index inputs computed for another window size than the tower's: the graph runs, but its
    embeddings are not transformers' and nothing is written."""
    from huatuo_cli.errors import HuatuoError
    from huatuo_convert.qwen_vision_export import export_qwen_vision

    ckpt = reference.ckpt
    vision_config = {**ckpt.config["vision_config"], "window_size": 56}
    with pytest.raises(HuatuoError, match="does not match transformers' Qwen2.5-VL tower"):
        export_qwen_vision(reference.model.model.visual, vision_config, ckpt.preprocessor_config, tmp_path / "vision",
                           tolerances=FAMILY.vision_tolerances, config_sha256=ckpt.config_sha256)
    assert not (tmp_path / "vision").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("rope_scaling"), "no M-RoPE sections"),
    (lambda c: c["rope_scaling"].update(mrope_section=[2, 3, 4]), "do not split the head dimension"),
])
def test_a_config_without_valid_mrope_sections_is_refused(checkpoint, tmp_path, edit, message):
    src = tmp_path / "ckpt"
    shutil.copytree(checkpoint(), src)
    config = json.loads((src / "config.json").read_text())
    edit(config)
    (src / "config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(cli, ["convert", "all", str(src), str(tmp_path / "out"), "--quant", "f16"])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output


def test_the_mmproj_path_is_refused_for_this_family_with_a_message(bundle, tmp_path):
    scan = Path(get_testdata_file("CT_small.dcm", download=False))
    res = CliRunner().invoke(cli, ["ask", "--model", str(bundle()), "--vision", "mmproj", str(scan), QUESTION])
    assert res.exit_code == 1 and "answers with its ONNX vision graph only" in res.output and "Traceback" not in res.output


# -- every front end answers with it unchanged -------------------------------------------------------------

@pytest.mark.slow
def test_batch_writes_results_and_a_valid_sr_with_a_qwen_bundle(bundle, tmp_path):
    import subprocess

    from tests.batch_helpers import sample_folder

    studies = sample_folder(tmp_path / "studies", truncated=False, text_file=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["batch", str(studies), "--out", str(out), "--model", str(bundle()), "-q", QUESTION,
                                   "--max-tokens", "6", "--sr"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["answer"] and x["model"]["architecture"] == FAMILY.name for x in lines)
    srs = sorted(out.rglob("*.dcm"))
    assert len(srs) == 3
    check = subprocess.run(["dciodvfy", str(srs[0])], capture_output=True, text=True)
    assert "Error" not in check.stdout + check.stderr


@pytest.mark.slow
def test_eval_with_the_pytorch_reference_agrees_with_the_qwen_bundle(checkpoint, bundle, tmp_path):
    from tests.eval_data import write_eval_set

    data = write_eval_set(tmp_path / "set")
    res = CliRunner().invoke(cli, ["eval", str(bundle()), str(data), "--out", str(tmp_path / "out"), "--reference",
                                   str(checkpoint()), "--json", "--max-tokens", "4", "--threads", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["reference"]["overall"]["n"] == 3 and summary["reference"]["overall"]["agreement"] == 1.0


@pytest.mark.slow
def test_finetune_lora_on_the_llm_and_merger_then_the_merged_checkpoint_converts_and_answers_as_trained(
        checkpoint, bundle, tmp_path):
    """LoRA on the Qwen2.5 language model, the merger trained, the tower frozen; the merged checkpoint keeps
    the base's files, names and dtypes, passes every gate of `convert all`, and answers what it learnt."""
    from safetensors.torch import load_file

    from huatuo_convert.checkpoint import LlavaCheckpoint
    from tests.finetune_data import QUESTION as TRAINED_QUESTION
    from tests.finetune_data import SAMPLES, write_dataset
    from tests.test_finetune import FAST

    base = checkpoint("4.x", "nested")  # the stored names differ from transformers' own: merged back as stored
    data = write_dataset(tmp_path / "data")
    out, merged, trained_bundle = tmp_path / "run", tmp_path / "merged", tmp_path / "bundle"
    res = CliRunner().invoke(cli, ["finetune", "--model", str(base), "--data", str(data), "--out", str(out),
                                   "--max-steps", "30", *FAST, "--merge", str(merged)])
    assert res.exit_code == 0, res.output
    assert "merge check: top-1 100.00%" in res.output
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora = [n for n in adapter if ".lora_" in n]
    assert lora and all(".language_model.layers." in n for n in lora)
    assert any(".visual.merger." in n for n in adapter) and not any(".visual.blocks." in n for n in adapter)
    b, m = LlavaCheckpoint.open(base), LlavaCheckpoint.open(merged)
    assert (merged / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert sorted(b.tensors.inner.names()) == sorted(m.tensors.inner.names())  # the stored (nested) names
    for name in b.tensors.names():
        assert m.get(name).dtype == b.get(name).dtype
        changed = not torch.equal(m.get(name), b.get(name))
        expected = name.startswith("visual.merger.") or (name.startswith("model.layers.") and name.endswith(
            ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
             "up_proj.weight", "down_proj.weight")))
        assert changed == expected, name
    res = CliRunner().invoke(cli, ["convert", "all", str(merged), str(trained_bundle), "--quant", "f16", "--no-mmproj"])
    assert res.exit_code == 0, res.output
    learnt = 0
    for image, (window, answer) in SAMPLES.items():
        ask = ["ask", str(data.parent / "img" / image), TRAINED_QUESTION, "--window", window,
               "--repetition-penalty", "1.0", "--max-tokens", "24"]
        learnt += CliRunner().invoke(cli, [*ask, "--model", str(trained_bundle)]).stdout.strip() == answer
        assert CliRunner().invoke(cli, [*ask, "--model", str(bundle())]).stdout.strip() != answer
    assert learnt == len(SAMPLES)


@pytest.mark.slow
def test_serve_answers_as_ask_with_a_qwen_bundle(bundle, tmp_path):
    """The OpenAI-compatible server, spoken to with the real openai client, answers a DICOM question
    with exactly `ask`'s answer (one answering path for every front end)."""
    from tests.test_serve import QUESTION as ASK
    from tests.test_serve import Server, ask_json, data_url, image_message

    scan = Path(get_testdata_file("US1_UNCR.dcm", download=False))
    (tmp_path / "home").mkdir()
    server = Server(bundle(), tmp_path / "home")
    try:
        expected = ask_json(server, bundle(), "--max-tokens", "12", str(scan), ASK)[0]
        reply = server.client().chat.completions.create(model=bundle().name, max_tokens=12, temperature=0,
                                                        messages=image_message(data_url(scan, "application/dicom")))
        assert reply.choices[0].message.content == expected["answer"]
        assert reply.usage.prompt_tokens == expected["prompt_tokens"]
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_tui_answers_as_ask_with_a_qwen_bundle(bundle, tmp_path):
    """The terminal app (Textual's Pilot) streams exactly the answer `ask`'s engine gives, follow-up included."""
    from huatuo_cli.tui.app import make_app
    from tests.test_tui import QUESTION as TUI_QUESTION
    from tests.test_tui import SIZE, ask, oracle_answer, wait_answer
    from tests.tui_helpers import screen_text, select_series, settle, studies_folder

    expected = oracle_answer(bundle(), "lung")
    app = make_app(studies_folder(tmp_path / "studies"), model=bundle(), graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        assert f"model {bundle().name}" in screen_text(app)
        select_series(app, "CT")
        await pilot.press("w")
        await settle(pilot, lambda: app.view.window == "lung" and app.picture[0] == app.view.key())
        await ask(pilot, app, TUI_QUESTION)
        await wait_answer(pilot, app)
        chat = app.chats[app.view.study.key]
        assert chat.exchanges[0].outcome == "ok" and chat.exchanges[0].answer == expected
        await ask(pilot, app, "And the other lung?")
        await wait_answer(pilot, app, 2)
        assert chat.exchanges[1].outcome == "ok" and len(chat._conversation.turns) == 2
