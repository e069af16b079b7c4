"""Summaries, reports (`report.md`, `report.html`) and the last evaluation kept beside a bundle.

Accuracy is the first extracted choice's (docs/eval.md); `official_accuracy` is the official scorer's
per-data-set maximum of first- and last-choice accuracy. Paper figures come from the bundle's model
card (`[benchmarks]` in models/cards/*.md), matched by the data set names of the official data."""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path
from typing import Any

from huatuo_cli.atomic import write_atomic
from huatuo_cli.evaluation.stats import Paired, wilson

OVERALL = "overall"
#: data set name in the official evaluation data -> its key in a model card's [benchmarks]
PAPER_NAMES = {"VQA-RAD": "VQA-RAD", "SLAKE": "SLAKE", "PathVQA": "PathVQA", "PMC-VQA": "PMC-VQA",
               "OmniMedVQA": "OmniMedVQA", "MMMU-Medical-Tracks": "MMMU Health & Medicine (test)"}
#: the last evaluation of BUNDLE is BUNDLE's parent/<name>.eval.json (bundles are hashed: never inside)
LAST_SUFFIX = ".eval.json"


def paper_figures(card_meta: dict[str, Any] | None) -> dict[str, float]:
    """Data set name -> published accuracy (%) for the checkpoint the card names; empty if none."""
    bench = (card_meta or {}).get("benchmarks") or {}
    return {name: float(bench[key]) for name, key in PAPER_NAMES.items() if isinstance(bench.get(key), int | float)}


def _cell(lines: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(lines)
    correct = sum(1 for line in lines if line["correct"])
    last = sum(1 for line in lines if line.get("correct_last"))
    lo, hi = wilson(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [lo, hi],
            "official_accuracy": max(correct, last) / n if n else 0.0}


def summarise(lines: list[dict[str, Any]], paper: dict[str, float] | None = None) -> dict[str, Any]:
    """{"datasets": {NAME: {n, correct, accuracy, ci95, official_accuracy[, paper, difference]}}, "overall": {...}}"""
    groups: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault(line["dataset"], []).append(line)
    datasets = {}
    for name in sorted(groups):
        cell = _cell(groups[name])
        if paper and name in paper:
            cell["paper"] = paper[name]
            cell["difference"] = round(100 * cell["accuracy"] - paper[name], 2)  # points
        datasets[name] = cell
    return {"datasets": datasets, OVERALL: _cell(lines)}


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> Paired:
    """A and B on the items both answered (matched by id)."""
    other = {line["id"]: line for line in b}
    both = [(x, other[x["id"]]) for x in a if x["id"] in other]
    return Paired(n=len(both), only_a=sum(1 for x, y in both if x["correct"] and not y["correct"]),
                  only_b=sum(1 for x, y in both if y["correct"] and not x["correct"]),
                  same_choice=sum(1 for x, y in both if x["choice"] == y["choice"]))


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Per data set and overall: difference A - B (fraction) with its 95 % CI, agreement, McNemar p."""
    def cell(p: Paired) -> dict[str, Any]:
        lo, hi = p.ci95
        return {"n": p.n, "difference": p.difference, "ci95": [lo, hi], "agreement": p.agreement,
                "only_a": p.only_a, "only_b": p.only_b, "mcnemar_p": p.p_value}

    names = sorted({line["dataset"] for line in a})
    return {"datasets": {name: cell(paired([x for x in a if x["dataset"] == name], b)) for name in names},
            OVERALL: cell(paired(a, b))}


def compare_sentence(name_a: str, name_b: str, c: dict[str, Any]) -> str:
    """'A vs B: -0.4 points (95 % CI -1.2 to 0.4), agreement 97.9 %, McNemar p = 0.43'"""
    lo, hi = c["ci95"]
    return (f"{name_a} vs {name_b}: {100 * c['difference']:+.1f} points (95 % CI {100 * lo:+.1f} to {100 * hi:+.1f}), "
            f"agreement {100 * c['agreement']:.1f} %, McNemar exact p = {c['mcnemar_p']:.3g} (n = {c['n']})")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, cell in [*summary["datasets"].items(), ("overall", summary[OVERALL])]:
        lo, hi = cell["ci95"]
        rows.append([name, str(cell["n"]), str(cell["correct"]), _pct(cell["accuracy"]), f"{_pct(lo)}-{_pct(hi)}",
                     _pct(cell["official_accuracy"]), f"{cell['paper']:.1f}" if "paper" in cell else "",
                     f"{cell['difference']:+.1f}" if "difference" in cell else ""])
    return rows


HEAD = ["data set", "n", "correct", "accuracy %", "95 % CI (Wilson)", "official max(first, last) %", "paper %",
        "difference (points)"]


def render_markdown(meta: dict[str, Any], results: dict[str, dict[str, Any]], comparisons: list[str]) -> str:
    out = [f"# huatuo eval: {meta['data']}", "",
           f"- data sha256 `{meta['data_sha256'][:16]}`, {meta['items']} scored items; not scored: "
           + (", ".join(f"{k} {v}" for k, v in meta["not_scored"].items()) or "none"),
           f"- decoding: {meta['sampling']}", f"- {meta['notice']}", ""]
    for name, summary in results.items():
        out += [f"## {name}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        out += ["| " + " | ".join(row) + " |" for row in _rows(summary)]
        out.append("")
    if comparisons:
        out += ["## Comparison", "", *[f"- {c}" for c in comparisons], ""]
    return "\n".join(out)


def render_html(meta: dict[str, Any], results: dict[str, dict[str, Any]], comparisons: list[str]) -> str:
    parts = [f"<!doctype html><meta charset=utf-8><title>huatuo eval</title><h1>huatuo eval: {escape(meta['data'])}</h1>",
             f"<p>{meta['items']} scored items; decoding: {escape(meta['sampling'])}</p><p>{escape(meta['notice'])}</p>"]
    for name, summary in results.items():
        parts.append(f"<h2>{escape(name)}</h2><table border=1><tr>" + "".join(f"<th>{escape(h)}</th>" for h in HEAD) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in _rows(summary)]
        parts.append("</table>")
    if comparisons:
        parts.append("<h2>Comparison</h2><ul>" + "".join(f"<li>{escape(c)}</li>" for c in comparisons) + "</ul>")
    return "\n".join(parts) + "\n"


def write_reports(out: Path, meta: dict[str, Any], results: dict[str, dict[str, Any]], comparisons: list[str]) -> None:
    write_atomic(out / "report.md", render_markdown(meta, results, comparisons), private=True)
    write_atomic(out / "report.html", render_html(meta, results, comparisons), private=True)


def last_path(bundle: Path) -> Path:
    bundle = Path(bundle).resolve()
    return bundle.with_name(bundle.name + LAST_SUFFIX)


def write_last(bundle: Path, summary: dict[str, Any], *, data: str, data_sha256: str, sampling: str,
               out: Path) -> Path | None:
    """Keep this evaluation beside the bundle for `models info`; None when its folder is read-only."""
    record = {"schema": "huatuo.eval-last/1", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": data,
              "data_sha256": data_sha256, "sampling": sampling, "out": str(out), **summary}
    try:
        return write_atomic(last_path(bundle), json.dumps(record, indent=2) + "\n")
    except OSError:
        return None


def read_last(bundle: Path) -> dict[str, Any] | None:
    path = last_path(bundle)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "overall" in record else None


def last_lines(record: dict[str, Any]) -> list[str]:
    """What `models info` prints about the last evaluation."""
    o = record["overall"]
    lines = [f"last evaluation: {record.get('date', '?')} on {record.get('data', '?')}: "
             f"{_pct(o['accuracy'])} % ({o['correct']}/{o['n']}, 95 % CI {_pct(o['ci95'][0])}-{_pct(o['ci95'][1])})"]
    for name, cell in record.get("datasets", {}).items():
        paper = f", paper {cell['paper']:.1f} %" if "paper" in cell else ""
        lines.append(f"  {name}: {_pct(cell['accuracy'])} % (n = {cell['n']}){paper}")
    return lines
