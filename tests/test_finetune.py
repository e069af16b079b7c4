"""`huatuo finetune` on tiny synthetic checkpoints, on the CPU.

The end-to-end test is the issue's proof: train on three image + answer records until they are
memorised, merge, convert with `huatuo convert all` (its fidelity gates), and `huatuo ask` with the
new bundle answers each training question with the trained answer where the base bundle does not.
The others pin each promise on its own: validation with line numbers, labels only on answers (with
the runtime's own prompt tokens), LoRA targets only in the language model, resume from the step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.engine.prompt import Turn, render
from tests.finetune_data import QUESTION, SAMPLES, record, write_dataset, write_images

FAST = ["--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--batch-size", "3", "--lr", "5e-3",
        "--lr-schedule", "constant", "--warmup-ratio", "0", "--no-gradient-checkpointing"]


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- data validation ----------------------------------------------------------------------------------

def test_bad_records_are_listed_with_line_numbers_and_nothing_trains(make_checkpoint, tmp_path):
    write_images(tmp_path / "img")
    (tmp_path / "img" / "broken.png").write_text("not an image")
    good = record("photo.png", QUESTION, "Cardiomegaly.")
    lines = [
        json.dumps(good),                                                            # 1 good
        '{"image": "img/photo.png", "conversations": [',                             # 2 malformed
        json.dumps(record("missing.png", QUESTION, "x")),                            # 3 missing image
        json.dumps({**good, "conversations": good["conversations"][::-1]}),          # 4 turns out of order
        "",                                                                          # 5 blank: ignored
        json.dumps(record("photo.png", QUESTION, "effusion " * 80)),                 # 6 longer than the context
        json.dumps(record("broken.png", QUESTION, "x")),                             # 7 unreadable image
        json.dumps({"images": ["img/photo.png", "img/ct.dcm"], "conversations": good["conversations"]}),  # 8 2 images
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["finetune", "--model", str(make_checkpoint()), "--data", str(data), "--out", str(out),
            "--max-length", "64", "--max-steps", "1", *FAST]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    text = res.output
    assert "6 bad record(s) in train.jsonl" in text
    assert "line 2: malformed JSON" in text
    assert "line 3: image missing.png not found" in text
    assert "line 4: turn 1 is 'gpt'; expected a 'human' turn" in text
    assert "line 6:" in text and "exceed the context of 64" in text
    assert "line 7: image broken.png is unreadable" in text
    assert "line 8: 1 <image> markers for 2 images" in text
    assert "line 1:" not in text and "line 5:" not in text
    assert not (out / "adapter").exists() and not (out / "metrics.jsonl").exists()

    res = CliRunner().invoke(cli, args + ["--skip-bad"])
    assert res.exit_code == 0, res.output
    assert "skipping 6 bad record(s)" in res.output
    assert json.loads((out / "finetune.json").read_text())["data"]["train_records"] == 1


def test_missing_train_extra_names_it(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    code = (
        "import sys\n"
        "for name in ('peft', 'accelerate', 'torch', 'transformers', 'safetensors'): sys.modules[name] = None\n"
        "from click.testing import CliRunner\n"
        "from huatuo_cli.cli import cli\n"
        "for args in (['finetune', '--help'], ['finetune', 'merge', '--help']):\n"
        "    res = CliRunner().invoke(cli, args)\n"
        "    assert res.exit_code == 0 and 'Example' in res.output, res.output\n"
        f"res = CliRunner().invoke(cli, ['finetune', '--model', {str(tmp_path)!r}, '--data', {str(data)!r}, "
        f"'--out', {str(tmp_path / 'out')!r}])\n"
        "assert res.exit_code == 1 and \"huatuo-cli[train]\" in res.output, res.output\n"
        "assert 'Traceback' not in res.output\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- prompt and labels --------------------------------------------------------------------------------

def test_labels_cover_answers_only_with_the_runtime_prompt_tokens(make_checkpoint, tiny_bundle):
    from huatuo_cli.engine.llm import LlamaEngine
    from huatuo_convert.finetune.encode import IGNORE, IMAGE_TOKEN, encode_turns
    from huatuo_convert.reference_tokenizer import load_reference_tokenizer

    tok = load_reference_tokenizer(make_checkpoint())
    turns = [Turn("Describe the abnormality.", images=1, answer="Left pleural effusion."),
             Turn("Is there a pneumothorax?", answer="No.")]
    enc = encode_turns(tok, turns, tokens_per_image=16)
    ids, labels = enc.input_ids, enc.labels
    # what the workstation sends for the follow-up: same prompt text, tokenized by the bundle's GGUF
    engine = LlamaEngine(tiny_bundle / "llm-f16.gguf", n_ctx=256, n_threads=1)
    try:
        chunks = engine.tokenize(render([turns[0], Turn("Is there a pneumothorax?")]))
    finally:
        engine.close()
    runtime = chunks[0] + [IMAGE_TOKEN] * 16 + chunks[1]
    assert ids[: len(runtime)] == runtime
    # the last answer + EOS after the runtime's prompt, the first answer where the history holds it
    last = tok.encode_text("No.") + [tok.eos_id]
    assert ids[len(runtime):] == last
    supervised = [i for i, label in enumerate(labels) if label != IGNORE]
    assert all(labels[i] == ids[i] for i in supervised)
    first = tok.decode([ids[i] for i in supervised if i < len(runtime)])
    assert first.strip() == "Left pleural effusion."
    assert supervised[-len(last):] == list(range(len(runtime), len(ids)))
    # every prompt position (markers, question, image positions) carries no loss
    assert sum(1 for i in range(len(ids)) if labels[i] == IGNORE) == len(ids) - len(supervised)
    assert all(labels[i] == IGNORE for i, t in enumerate(ids) if t == IMAGE_TOKEN)
    assert len(supervised) == len(tok.encode_text("Left pleural effusion.")) + len(last)


# -- what LoRA touches --------------------------------------------------------------------------------

@pytest.mark.parametrize("train_projector", [True, False])
def test_lora_only_in_the_language_model(make_checkpoint, train_projector):
    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.finetune.model import add_lora, enable_checkpointing, load_base, trainable_names

    base = load_base(LlavaCheckpoint.open(make_checkpoint()))
    # the trap: CLIP's attention has q_proj/k_proj/v_proj too, so bare names would match it
    assert any(name.startswith("vision_tower.") and name.endswith("q_proj") for name, _ in base.named_modules())
    model = add_lora(base, rank=4, alpha=8, dropout=0.0, train_projector=train_projector)
    lora = [name for name, _ in model.named_modules() if name.endswith(".lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x q k v o gate up down
    assert all(".language_model.model.layers." in name for name in lora)
    trainable = trainable_names(model)
    assert not [n for n in trainable if ".vision_tower." in n]
    projector = [n for n in trainable if ".mm_projector." in n]
    assert bool(projector) == train_projector
    assert set(trainable) - set(projector) == {n for n, _ in model.named_parameters() if ".lora_" in n}
    enable_checkpointing(model)
    assert model.base_model.model.language_model.is_activation_checkpointing


# -- training, resume ---------------------------------------------------------------------------------

def test_loss_falls_and_resume_continues_from_the_saved_step(make_checkpoint, tmp_path):
    data = write_dataset(tmp_path / "data")
    common = ["finetune", "--model", str(make_checkpoint()), "--data", str(data), "--eval", str(data), *FAST,
              "--save-every", "2", "--eval-every", "3"]
    interrupted, straight = tmp_path / "a", tmp_path / "b"
    assert invoke(common + ["--out", str(interrupted), "--max-steps", "3"]).exit_code == 0
    # as if killed after step 3 was logged but before its checkpoint was written
    shutil.rmtree(interrupted / "checkpoints" / "step-00000003")
    res = invoke(common + ["--out", str(interrupted), "--max-steps", "6"])
    assert res.exit_code == 1 and "--resume" in res.output  # an existing run is never overwritten
    res = invoke(common + ["--out", str(interrupted), "--max-steps", "6", "--resume"])
    assert res.exit_code == 0 and "resuming from step-00000002 (step 2 of 6)" in res.output
    assert invoke(common + ["--out", str(straight), "--max-steps", "6"]).exit_code == 0
    resumed, whole = metrics(interrupted), metrics(straight)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(resumed, whole, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
    assert whole[-1]["loss"] < 0.5 * whole[0]["loss"]
    assert whole[-1]["eval_loss"] < whole[2]["eval_loss"]
    result = json.loads((interrupted / "finetune.json").read_text())
    assert result["steps"] == 6 and result["final_train_loss"] == pytest.approx(resumed[-1]["loss"])
    checkpoints = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004", "step-00000006"]


def test_a_failed_finish_leaves_neither_adapter_nor_result(make_checkpoint, tmp_path, monkeypatch):
    """OUT/adapter and OUT/finetune.json are written all or nothing (`merge` takes finetune.json for
    a finished run): a save that fails half-way leaves neither, nor a temp folder."""
    import peft

    save = peft.PeftModel.save_pretrained

    def failing(self, folder, **kwargs):
        if "checkpoints" in Path(folder).parts:  # the step checkpoints save as before
            return save(self, folder, **kwargs)
        save(self, folder, **kwargs)
        raise OSError("the disk went away after the adapter's files")

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", failing)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="went away"):
        invoke(["finetune", "--model", str(make_checkpoint()), "--data", str(write_dataset(tmp_path / "data")), *FAST,
                "--max-steps", "1", "--out", str(out)])
    assert (out / "finetune_run.json").is_file() and (out / "checkpoints" / "step-00000001").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "finetune_run.json", "metrics.jsonl"]


# -- the whole road: train, merge, convert, ask -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch,layout", [("llava-qwen2", "embedded"), ("llava-llama", "folder")])
def test_memorised_answers_survive_merge_conversion_and_ask(make_checkpoint, tiny_bundle, tmp_path, arch, layout):
    """7B layout (Qwen2 BPE, tower inside the shards) and 34B layout (Yi sentencepiece, CLIP folder)."""
    import torch
    from safetensors.torch import load_file

    from huatuo_convert.bundle_build import build_bundle
    from huatuo_convert.checkpoint import LlavaCheckpoint

    base = make_checkpoint(arch=arch, vision_layout=layout)
    if arch != "llava-qwen2":
        tiny_bundle = tmp_path / "base-bundle"
        build_bundle(base, tiny_bundle, "f16", with_mmproj=False)
    data = write_dataset(tmp_path / "data")
    out, merged, bundle = tmp_path / "run", tmp_path / "merged", tmp_path / "bundle"
    res = invoke(["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--max-steps", "25",
                  *FAST, "--data-description", "three synthetic images", "--merge", str(merged)])
    assert res.exit_code == 0, res.output
    assert "merge check: top-1 100.00%" in res.output

    # the merged checkpoint: base layout and dtype, config copied, trained projector in, tower unchanged
    card = json.loads((merged / "huatuo_finetune.json").read_text())
    assert card["schema"] == 1 and card["base_checkpoint"] == base.name
    assert card["base_config_sha256"] == LlavaCheckpoint.open(base).config_sha256
    assert card["data"] == {"train_file": "train.jsonl", "train_records": 3, "eval_file": None, "eval_records": None,
                            "images": 3, "description": "three synthetic images"}
    assert card["steps"] == 25 and card["train_projector"] is True and card["lora_rank"] == 8
    assert card["final_train_loss"] < 0.05 and card["merge_check"]["passed"]
    assert (merged / "config.json").read_bytes() == (base / "config.json").read_bytes()
    b, m = LlavaCheckpoint.open(base), LlavaCheckpoint.open(merged)
    assert sorted(b.tensors.names()) == sorted(m.tensors.names())
    assert {p.name for p in b.tensors.files.values()} == {p.name for p in m.tensors.files.values()}
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name in b.projector_tensor_names():
        trained = adapter["base_model.model.mm_projector." + name.removeprefix("model.mm_projector.")]
        assert m.get(name).dtype == b.get(name).dtype
        assert torch.equal(m.get(name), trained.to(b.get(name).dtype))
        assert not torch.equal(m.get(name), b.get(name))
    for name in b.tensors.names():
        changed = not torch.equal(m.get(name), b.get(name))
        assert changed == (name.startswith("model.mm_projector.") or name.endswith(
            ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
             "up_proj.weight", "down_proj.weight")) and "vision_tower" not in name), name

    # `convert all` takes it unchanged (f16: its exact gates apply), then the workstation answers
    res = invoke(["convert", "all", str(merged), str(bundle), "--quant", "f16", "--no-mmproj"])
    assert res.exit_code == 0, res.output
    # the bundle's card is its base card plus what `huatuo finetune` recorded (models/cards, issue 15)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert any(f["path"] == "MODEL_CARD.md" and f["role"] == "model-card" for f in manifest["files"])
    bundle_card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Fine-tuning" in bundle_card and "three synthetic images" in bundle_card
    assert "steps: 25" in bundle_card
    for image, (window, answer) in SAMPLES.items():
        ask = ["ask", str(data.parent / "img" / image), QUESTION, "--window", window, "--repetition-penalty", "1.0",
               "--max-tokens", "24"]
        assert invoke(ask + ["--model", str(bundle)]).stdout.strip() == answer
        assert invoke(ask + ["--model", str(tiny_bundle)]).stdout.strip() != answer


def test_merge_keeps_a_vision_tower_folder_and_refuses_unfinished_runs(make_checkpoint, tmp_path, monkeypatch):
    from huatuo_cli.errors import HuatuoError
    from huatuo_convert.checkpoint import LlavaCheckpoint
    from huatuo_convert.finetune import merge as merge_mod
    from huatuo_convert.finetune.model import load_base

    base = make_checkpoint(vision_layout="folder")
    data = write_dataset(tmp_path / "data")
    out, merged = tmp_path / "run", tmp_path / "merged"
    res = CliRunner().invoke(cli, ["finetune", "merge", str(tmp_path / "data"), str(merged)])
    assert res.exit_code == 1 and "no finished fine-tuning run" in res.output
    assert invoke(["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--max-steps", "8",
                   "--freeze-projector", *FAST]).exit_code == 0

    # the merge check: a merged checkpoint that is not the trained model never gets its name
    real_write = merge_mod._write_weights

    def write_unmerged(ckpt, state, work, *names):
        real_write(ckpt, load_base(LlavaCheckpoint.open(base)).state_dict(), work, *names)

    monkeypatch.setattr(merge_mod, "_write_weights", write_unmerged)
    with pytest.raises(HuatuoError, match="does not reproduce the trained model"):
        merge_mod.merge_run(out, merged)
    assert not merged.exists() and not list(tmp_path.glob(".merged.*"))
    monkeypatch.setattr(merge_mod, "_write_weights", real_write)
    assert invoke(["finetune", "merge", str(out), str(merged)]).exit_code == 0
    folder = "vit/clip_vit_large_patch14_336"
    for path in (base / folder).iterdir():
        assert (merged / folder / path.name).read_bytes() == path.read_bytes()
    card = json.loads((merged / "huatuo_finetune.json").read_text())
    assert card["train_projector"] is False
    assert (merged.stat().st_mode & 0o777) == (base.stat().st_mode & 0o777)
    res = CliRunner().invoke(cli, ["finetune", "merge", str(out), str(merged)])
    assert res.exit_code == 1 and "already exists" in res.output


@pytest.mark.slow
def test_two_processes_under_torchrun_share_the_data(make_checkpoint, tmp_path):
    """The multi-GPU recipe's launcher on the CPU (gloo): accelerate splits the batches, no code of ours."""
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "huatuo_cli", "finetune",
           "--model", str(make_checkpoint()), "--data", str(data), "--out", str(out), "--max-steps", "4",
           "--batch-size", "2", *FAST[:-1]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = metrics(out)
    # 3 records, 2 per batch on each of 2 processes: one optimizer step is one epoch (one process: two)
    assert [m["epoch"] for m in lines] == [1.0, 2.0, 3.0, 4.0]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert json.loads((out / "finetune.json").read_text())["steps"] == 4


def test_ctrl_c_keeps_the_finished_steps_and_resume_goes_on(make_checkpoint, tmp_path):
    import os
    import signal
    import time

    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "huatuo_cli", "finetune", "--model", str(make_checkpoint()), "--data", str(data),
            "--out", str(out), "--max-steps", "100000", "--save-every", "100000", *FAST]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    done = metrics(out)[-1]["step"]
    assert f"interrupted: saved step-{done:08d}" in err
    res = invoke(["finetune", "--model", str(make_checkpoint()), "--data", str(data), "--out", str(out),
                  "--max-steps", str(done + 2), "--save-every", "100000", *FAST, "--resume"])
    assert res.exit_code == 0 and f"resuming from step-{done:08d}" in res.output
    assert [m["step"] for m in metrics(out)] == list(range(1, done + 3))


def test_bf16_path_with_gradient_checkpointing(make_checkpoint, tmp_path):
    """The GPU's code path (frozen base in bf16, autocast, checkpointing), run by torch's CPU autocast."""
    from safetensors.torch import load_file

    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    # its own process: accelerate keeps one precision per process (a singleton), as a CLI run does
    proc = subprocess.run([sys.executable, "-m", "huatuo_cli", "finetune", "--model", str(make_checkpoint()),
                           "--data", str(data), "--out", str(out), "--max-steps", "6", *FAST[:-1], "--precision",
                           "bf16", "--gradient-checkpointing", "--merge", str(tmp_path / "merged")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [m["loss"] for m in metrics(out)]
    assert losses[-1] < 0.5 * losses[0]
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {str(t.dtype) for t in adapter.values()} == {"torch.float32"}  # trainable weights stay fp32
    assert json.loads((tmp_path / "merged" / "huatuo_finetune.json").read_text())["merge_check"]["passed"]


@pytest.mark.parametrize("markers", ["text", "tokens"])
def test_follow_up_turns_encode_for_the_34b_layout(make_checkpoint, markers):
    """cli.py tokenizes an earlier answer as its own call, so sentencepiece puts its dummy-prefix space
    before `<|assistant|>` in the history but not in the open turn: the history is not a token prefix of
    the next prompt. Each answer is supervised where it stands in the prompt the runtime sends."""
    from huatuo_convert.finetune.encode import IGNORE, encode_turns, prompt_ids
    from huatuo_convert.reference_tokenizer import load_reference_tokenizer

    tok = load_reference_tokenizer(make_checkpoint(arch="llava-llama", markers=markers))
    turns = [Turn("Describe the abnormality.", images=1, answer="Left pleural effusion."),
             Turn("Is there a pneumothorax?", answer="No."), Turn("How large?", answer="About 4 cm.")]
    enc = encode_turns(tok, turns, tokens_per_image=16)
    prompt = prompt_ids(tok, [*turns[:2], Turn("How large?")], 16)
    assert enc.input_ids[: len(prompt)] == prompt  # what the workstation sends for the third question
    assert enc.input_ids[len(prompt):] == tok.encode_text("About 4 cm.") + [tok.eos_id]
    supervised = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE]
    assert all(label in (IGNORE, t) for t, label in zip(enc.input_ids, enc.labels, strict=True))
    assert tok.decode(supervised[:-1]).split() == "Left pleural effusion.No. About 4 cm.".split()
