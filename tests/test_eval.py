"""`huatuo eval` (issue 23): the official scorer rule by rule, the statistics against known numbers,
the run on the tiny bundle (official layout, open items, DICOM), resume after kill -9, `eval score`,
`--compare`, `--json`, the last evaluation in `models info`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from huatuo_cli import audit
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from huatuo_cli.evaluation import report
from huatuo_cli.evaluation.data import load_set
from huatuo_cli.evaluation.scorer import INSTRUCTION, match_choice, prompt, score_line
from huatuo_cli.evaluation.stats import Paired, mcnemar_exact, wilson
from tests.eval_data import OPTIONS, write_eval_set

FAST = ["--max-tokens", "4", "--threads", "1"]


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


# -- the scorer, rule by rule ----------------------------------------------------------------------

@pytest.mark.parametrize("response,first,last,rule", [
    ("The answer is B.", "B", "B", "answer-is"),
    ("I think the answer is C, no, the answer is A", "C", "A", "answer-is"),
    ("B", "B", "B", "letter"),
    ("B. pneumothorax", "B", "B", "letter"),
    ("(C) cardiomegaly; not D.", "C", "D", "letter"),
    ("Option:D", "D", "D", "letter"),
    ("选项是C", "C", "C", "letter"),
    ("A large effusion is seen", "A", "A", "closest"),    # 'A ' is an article, never a choice
    ("E", "C", "C", "closest"),   # no option of four: difflib; B and C tie at 2/13, the later wins (>=)
    ("Big cardiomegaly, likely pneumothorax too", "C", "B", "text"),
    ("PNEUMOTHORAX", "B", "B", "text"),                   # option text, case-insensitive
    ("cardiomegally", "C", "C", "closest"),               # a misspelling: difflib's closest option
    ("", "D", "D", "closest"),                            # nothing similar: the last option (>= ties)
    ("## Thinking\nB?\n## Final Response\n\nThe answer is D", "D", "D", "answer-is"),
])
def test_match_choice_rules(response, first, last, rule):
    assert match_choice(response, OPTIONS) == type(match_choice("A", OPTIONS))(first, last, rule)


def test_letter_rule_comes_before_option_text():
    # the response names option A's text but its standalone letter is C: the letter wins
    assert match_choice("pleural effusion? No: C", OPTIONS).first == "C"


def test_prompt_is_the_official_one():
    assert prompt("Q?", ["x", "y"]) == f"Q?\nA. x\nB. y\n{INSTRUCTION}"
    assert INSTRUCTION == "Answer with the option's letter from the given choices directly."


def test_score_line_marks_correctness():
    line = score_line({"options": OPTIONS, "answer": "cardiomegaly", "response": "C"})
    assert (line["answer_letter"], line["choice"], line["correct"]) == ("C", "C", True)
    assert score_line({"options": OPTIONS, "answer": "normal", "response": "C"})["correct"] is False


# -- statistics against known numbers --------------------------------------------------------------

def test_wilson_known_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)   # Newcombe 1998, table I style
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)  # Newcombe's example 81/263
    assert wilson(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_and_paired_difference():
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    p = Paired(n=100, only_a=2, only_b=6, same_choice=90)
    assert p.difference == pytest.approx(-0.04) and p.agreement == pytest.approx(0.9)
    se = ((2 + 6) - (2 - 6) ** 2 / 100) ** 0.5 / 100
    assert p.ci95 == pytest.approx((-0.04 - 1.959964 * se, -0.04 + 1.959964 * se), abs=1e-6)
    assert p.p_value == pytest.approx(mcnemar_exact(2, 6))


def test_compare_on_lines():
    def line(i, correct, choice, ds="SLAKE"):
        return {"id": str(i), "dataset": ds, "correct": correct, "choice": choice}
    a = [line(0, True, "A"), line(1, True, "B"), line(2, False, "C"), line(3, True, "A", "VQA-RAD")]
    b = [line(0, True, "A"), line(1, False, "C"), line(2, False, "C"), line(3, False, "B", "VQA-RAD")]
    c = report.compare(a, b)
    assert c["overall"]["agreement"] == 0.5 and c["overall"]["difference"] == 0.5
    assert c["overall"]["only_a"] == 2 and c["overall"]["only_b"] == 0 and c["overall"]["mcnemar_p"] == 0.5
    assert c["datasets"]["SLAKE"]["n"] == 3
    text = report.compare_sentence("Q4_K_M", "F16", c["overall"])
    assert text.startswith("Q4_K_M vs F16: +50.0 points (95 % CI") and "agreement 50.0 %" in text


def test_paper_figures_from_the_cards():
    import tomllib

    cards = Path(__file__).parents[1] / "models" / "cards"
    meta = tomllib.loads((cards / "huatuogpt-vision-7b.md").read_text().split("+++")[1])
    assert report.paper_figures(meta) == {"VQA-RAD": 63.7, "SLAKE": 76.2, "PathVQA": 57.9, "PMC-VQA": 54.3,
                                          "OmniMedVQA": 74.0, "MMMU-Medical-Tracks": 50.6}
    meta = tomllib.loads((cards / "huatuogpt-vision-34b.md").read_text().split("+++")[1])
    assert list(report.paper_figures(meta).values()) == [68.1, 76.9, 63.5, 58.2, 76.9, 54.4]
    s = report.summarise([{"dataset": "SLAKE", "correct": True, "correct_last": True}] * 3
                         + [{"dataset": "SLAKE", "correct": False}], {"SLAKE": 76.2})
    assert s["datasets"]["SLAKE"]["difference"] == pytest.approx(75.0 - 76.2)


# -- the data set ----------------------------------------------------------------------------------

def test_official_layout_skips_open_items(tmp_path):
    eval_set = load_set(write_eval_set(tmp_path))
    assert [i.dataset for i in eval_set.items] == ["VQA-RAD", "SLAKE", "PathVQA"]
    assert dict(eval_set.skipped) == {"open question": 2}
    assert eval_set.items[1].letter == "B" and eval_set.items[1].window == "lung"
    assert eval_set.items[2].images == [tmp_path / "images" / "series"]
    assert [i.dataset for i in load_set(eval_set.path, datasets=("slake",)).items] == ["SLAKE"]


# -- the run on the tiny bundle --------------------------------------------------------------------

def test_eval_runs_through_the_answer_service_and_resumes(tiny_bundle, tmp_path):
    bundle = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    data = write_eval_set(tmp_path / "set")
    out = tmp_path / "out"
    res = invoke(["eval", str(bundle), str(data), "--out", str(out), "--json", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert set(summary["datasets"]) == {"VQA-RAD", "SLAKE", "PathVQA"}
    for cell in [*summary["datasets"].values(), summary["overall"]]:
        assert set(cell) >= {"n", "correct", "accuracy", "ci95"}
        assert cell["ci95"] == pytest.approx(list(wilson(cell["correct"], cell["n"])))
    assert summary["overall"]["n"] == 3 and summary["not_scored"] == {"open question": 2}
    lines = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2"]
    for x in lines:
        assert {"id", "dataset", "question", "options", "answer", "response", "choice", "correct"} <= set(x)
        assert x == {**x, **score_line(x)}  # the saved score is the scorer's
    # every answer audited as the eval command, with the official prompt
    entries = [e for e in audit.read_entries() if e["command"] == "eval"]
    assert len(entries) == 3 and all(e["outcome"] == "ok" for e in entries)
    assert (out / "report.md").is_file() and "| VQA-RAD |" in (out / "report.md").read_text()
    assert "<table" in (out / "report.html").read_text()
    # the last evaluation beside the bundle (never inside it), shown by models info; the bundle verifies
    assert (bundle.parent / "tiny.eval.json").is_file()
    info = invoke(["models", "info", str(bundle)])
    assert "last evaluation:" in info.output and "(n = 1)" in info.output
    assert invoke(["models", "verify", str(bundle)]).exit_code == 0
    # rerun: nothing answered again, same summary
    again = invoke(["eval", str(bundle), str(data), "--out", str(out), "--json", *FAST])
    assert json.loads(again.stdout)["overall"] == summary["overall"]
    assert len((out / "items.jsonl").read_text().splitlines()) == 3
    assert len([e for e in audit.read_entries() if e["command"] == "eval"]) == 3
    # eval score on the saved lines gives the same figures
    scored = json.loads(invoke(["eval", "score", str(out / "items.jsonl"), "--json"]).stdout)
    assert scored["overall"] == summary["overall"]


def test_compare_two_bundles(tiny_bundle, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    data = write_eval_set(tmp_path / "set")
    res = invoke(["eval", str(tiny_bundle), str(data), "--out", str(tmp_path / "out"), "--compare", str(other),
                  "--json", "--datasets", "SLAKE", "--datasets", "VQA-RAD", *FAST])
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)["compare"]
    assert c["model"] == "other"
    assert c["overall"]["agreement"] == 1.0 and c["overall"]["difference"] == 0.0 and c["overall"]["mcnemar_p"] == 1.0
    assert set(c["datasets"]) == {"SLAKE", "VQA-RAD"}
    assert "vs other: +0.0 points" in (tmp_path / "out" / "report.md").read_text()


def test_eval_score_reads_any_tools_lines(tmp_path):
    path = tmp_path / "responses.jsonl"
    rows = [{"dataset": "PMC-VQA", "options": OPTIONS, "answer": "normal", "response": "The answer is D"},
            {"dataset": "PMC-VQA", "options": OPTIONS, "answer": "normal", "response": "pneumothorax"},
            {"dataset": "SLAKE", "options": ["yes", "no"], "answer": "yes", "response": "A"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = json.loads(invoke(["eval", "score", str(path), "--json"]).stdout)
    assert s["datasets"]["PMC-VQA"]["correct"] == 1 and s["datasets"]["PMC-VQA"]["n"] == 2
    assert s["overall"] == {**s["overall"], "n": 3, "correct": 2}
    path.write_text(json.dumps({"options": OPTIONS}) + "\n")
    bad = CliRunner().invoke(cli, ["eval", "score", str(path)])
    assert bad.exit_code == 1 and "lacks answer, response" in bad.output


def test_reference_needs_the_convert_extra_message(tiny_bundle, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_convert(name, *args, **kwargs):
        if name.startswith("huatuo_convert"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real(name, *args, **kwargs)

    data = write_eval_set(tmp_path / "set")
    for mod in [m for m in sys.modules if m.startswith("huatuo_convert")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_convert)
    res = CliRunner().invoke(cli, ["eval", str(tiny_bundle), str(data), "--out", str(tmp_path / "o"), "--reference",
                                   str(tmp_path), "--datasets", "SLAKE", *FAST])
    assert res.exit_code == 1 and "convert" in res.output, res.output


def test_reference_runs_the_pytorch_oracle(make_checkpoint, tiny_bundle, tmp_path):
    data = write_eval_set(tmp_path / "set")
    res = invoke(["eval", str(tiny_bundle), str(data), "--out", str(tmp_path / "out"), "--reference",
                  str(make_checkpoint()), "--json", *FAST])
    assert res.exit_code == 0, res.output
    ref = json.loads(res.stdout)["reference"]
    assert ref["overall"]["n"] == 3 and ref["model"].startswith("reference:")
    # an F16 bundle of the same checkpoint picks the same letters as its reference
    assert ref["overall"]["agreement"] == 1.0
    # the reference answers through the same question rules and audit as the bundle: one record each
    entries = [e for e in audit.read_entries() if e["command"] == "eval"]
    by_model = {m: [e for e in entries if e["model_sha256"].startswith("reference:") == m] for m in (True, False)}
    assert len(by_model[True]) == 3 and len(by_model[False]) == 3
    assert all(e["outcome"] == "ok" for e in entries)


@pytest.mark.slow
def test_resume_after_kill_9_redoes_nothing(tiny_bundle, tmp_path):
    data = write_eval_set(tmp_path / "set", copies=60)   # 180 scored items
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "huatuo_cli", "eval", str(tiny_bundle), str(data), "--out", str(out),
           "--max-tokens", "24", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "items.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.is_file() and results.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(x)["id"] for x in results.read_text().splitlines() if x.endswith("}")]
    assert 5 <= len(before) < 180, "the run finished before it could be killed"
    rerun = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert sorted(ids, key=int) == [str(i) for i in range(300) if i % 5 < 3]   # every item once
    assert ids[:len(before)] == before                                          # the saved ones kept
    answered = [x for x in rerun.stderr.splitlines() if x.startswith("[")]
    assert len(answered) == 180 - len(before)                                   # only the rest answered
    assert json.loads(rerun.stdout)["overall"]["n"] == 180


@pytest.mark.slow
def test_a_bundle_that_memorised_its_answers_scores_100_where_the_base_does_not(make_checkpoint, tiny_bundle, tmp_path):
    """The whole road from image to extracted letter: fine-tune the tiny checkpoint on the eval
    prompts (only the image tells the answers apart), merge, convert, eval."""
    from tests.finetune_data import SAMPLES, write_images
    from tests.test_finetune import FAST as TRAIN

    root = tmp_path / "set"
    write_images(root / "img")
    options = ["Left pleural effusion", "No acute infarct", "Cardiomegaly"]
    items, train = [], []
    for i, (image, (window, _)) in enumerate(SAMPLES.items()):
        items.append({"question": "Describe the abnormality.", "options": options, "answer": options[i],
                      "image": [f"img/{image}"], "dataset": "SLAKE", "question_type": "closed", "window": window})
        rec = {"id": image, "image": f"img/{image}", "conversations": [
            {"from": "human", "value": "<image>\n" + prompt("Describe the abnormality.", options)},
            {"from": "gpt", "value": "ABC"[i]}]}
        if window != "auto":
            rec["window"] = window
        train.append(rec)
    data = root / "eval.json"
    data.write_text(json.dumps(items))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    merged, bundle = tmp_path / "merged", tmp_path / "bundle"
    res = invoke(["finetune", "--model", str(make_checkpoint()), "--data", str(root / "train.jsonl"), "--out",
                  str(tmp_path / "run"), "--max-steps", "25", *TRAIN, "--merge", str(merged)])
    assert res.exit_code == 0, res.output
    assert invoke(["convert", "all", str(merged), str(bundle), "--quant", "f16", "--no-mmproj"]).exit_code == 0
    args = [str(data), "--json", "--repetition-penalty", "1.0", "--max-tokens", "4"]
    tuned = json.loads(invoke(["eval", str(bundle), *args[:1], "--out", str(tmp_path / "a"), *args[1:]]).stdout)
    base = json.loads(invoke(["eval", str(tiny_bundle), *args[:1], "--out", str(tmp_path / "b"), *args[1:]]).stdout)
    assert tuned["overall"]["correct"] == 3 and tuned["overall"]["accuracy"] == 1.0
    assert base["overall"]["correct"] < 3


def test_two_runs_into_one_output_file_are_refused(tmp_path):
    """The second run would answer every item again and double the lines (`privacy.exclusive`)."""
    from huatuo_cli.evaluation.runner import locked

    items = tmp_path / "items.jsonl"
    with locked(items), pytest.raises(HuatuoError, match="another huatuo eval is writing items.jsonl"):
        with locked(items):
            pass
    with locked(items):  # released when the first run ends
        pass
