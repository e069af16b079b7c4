"""report.md and a self-contained report.html for a batch folder.

Both are rebuilt from results.jsonl, errors.jsonl and the thumbnails (plus their PHI-free facts:
modality, body part, image count, caveats) saved as studies finished, so a resumed batch reports
every study, not only those of the last run. The HTML embeds thumbnails as base64 PNG and loads
nothing from anywhere (no scripts, fonts or style sheets from outside): it opens on an air-gapped
workstation and can be mailed as one file. Every text is cleaned (`cleantext.clean_text`, the
same cleaning as the SR) and escaped.

Reports are made to be shared, so thumbnails of images that may carry burned-in annotation
(imaging.caveats: often the patient's name on ultrasound and secondary captures) are left out
unless the user asks for `--thumbnails all`; a note says so. Thumbnails show overlay planes
as a viewer draws them, and tiny images are scaled up to be visible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from html import escape
from pathlib import Path
from typing import Any

from huatuo_cli.bundles.model_card import card_link_html
from huatuo_cli.cleantext import clean_text
from huatuo_cli.privacy import NOTICE, private_dir, write_private

THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
#: which thumbnails the reports embed: "safe" leaves out possible burned-in annotation
THUMBNAIL_CHOICES = ("safe", "all", "none")
MD_WIDTH = 100


def study_slug(key: str) -> str:
    """File-name-safe, stable name for a study key (keys may hold any character)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def thumbnail(image: Any, overlay: Any = None) -> Any:
    """One thumbnail: overlays drawn, at most THUMB_SIZE, tiny images scaled up by a whole factor
    (nearest neighbour: the pixels stay sharp and honest) so that a 16x16 image is visible."""
    from PIL import Image

    from huatuo_cli.imaging.overlays import draw

    thumb = draw(image.convert("RGB"), overlay)
    if max(thumb.size) > THUMB_SIZE:
        thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
    elif max(thumb.size) * 2 <= THUMB_SIZE:
        factor = THUMB_SIZE // max(thumb.size)
        thumb = thumb.resize((thumb.width * factor, thumb.height * factor), Image.Resampling.NEAREST)
    return thumb


def save_thumbnails(out: Path, key: str, images: list[Any], *, metas: list[Any] | None = None,
                    overlays: list[Any] | None = None) -> list[Path]:
    """PNG thumbnails of the images the model saw, owner-only, under OUT/thumbs/, and beside them
    the study's PHI-free facts (<slug>.json) the reports show. `metas` are the images' ImageMeta
    (modality, body part, caveats); without them the caller vouches the images have no caveat."""
    from io import BytesIO

    folder = private_dir(out / THUMBS_DIR)
    for old in thumbnails(out, key):  # a study re-rendered with fewer images keeps no stale thumbnail
        old.unlink()
    paths = []
    for i, image in enumerate(images):
        buffer = BytesIO()
        thumbnail(image, overlays[i] if overlays and i < len(overlays) else None).save(buffer, format="PNG")
        paths.append(write_private(folder / f"{study_slug(key)}-{i}.png", buffer.getvalue()))
    metas = metas or []
    facts = {
        "modality": sorted({m.modality for m in metas if m is not None and m.modality}),
        "body_part": sorted({m.body_part for m in metas if m is not None and m.body_part}),
        "images": len(images),
        "caveats": [{"lossy": bool(getattr(m, "lossy", False)), "burned_in": getattr(m, "burned_in", "no")}
                    for m in (metas + [None] * len(images))[:len(images)]],
    }
    write_private(folder / f"{study_slug(key)}.json", json.dumps(facts))
    return paths


def study_facts(out: Path, key: str) -> dict[str, Any]:
    """What save_thumbnails recorded about a study; {} for a folder written before it did."""
    path = out / THUMBS_DIR / f"{study_slug(key)}.json"
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def shown_thumbnails(out: Path, key: str, mode: str) -> tuple[list[Path], list[str]]:
    """The thumbnails a shareable report embeds under `mode`, and the notes a reader needs.

    Unknown caveats (a folder from an older huatuo) count as possible burned-in annotation.
    """
    paths, facts = thumbnails(out, key), study_facts(out, key)
    caveats = facts.get("caveats") or []
    notes = []
    if any(c.get("lossy") for c in caveats):
        notes.append("Lossy-compressed source: fine detail and grey levels may differ from the acquisition.")
    risky = [i for i in range(len(paths)) if i >= len(caveats) or caveats[i].get("burned_in") != "no"]
    if any(c.get("burned_in") == "yes" for c in caveats):
        notes.append("The source declares burned-in annotation (text in the pixels, possibly identifying).")
    elif risky:
        notes.append("The source may carry burned-in annotation (ultrasound, secondary capture or a picture "
                     "file without the Burned In Annotation attribute).")
    if mode == "none":
        return [], notes
    if mode == "all" or not risky:
        return paths, notes
    notes.append(f"{len(risky)} thumbnail(s) left out of this shareable report for that reason; "
                 "rerun with --thumbnails all to include them.")
    return [p for i, p in enumerate(paths) if i not in risky], notes


def thumbnails(out: Path, key: str) -> list[Path]:
    """The study's thumbnail files, in the order the model saw the images."""
    folder = out / THUMBS_DIR
    found = list(folder.glob(f"{study_slug(key)}-*.png")) if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def _by_study(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        grouped.setdefault(record["study"], []).append(record)
    return grouped


def shown_item(error: dict[str, Any]) -> str:
    """How an error's item appears in a report. Unusable files are keyed by their path in
    errors.jsonl (owner-only, so the user can find them), but export folders are often named after
    patients: reports, made to be shared, show a hash of the path instead."""
    if error.get("kind") == "file":
        return "file-" + hashlib.sha256(str(error.get("key", "")).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return str(error.get("key") or "")


def _line(text: Any) -> str:
    """A single-line value for a report (question, table cell): cleaned, breaks folded."""
    return clean_text("" if text is None else str(text), multiline=False)


def _md_text(text: str) -> str:
    """Markdown-safe block: quote each line so model output cannot start headings or HTML blocks;
    long lines wrapped so the file reads in a plain editor too."""
    lines = clean_text(text or "(no answer)").splitlines() or [""]
    wrapped = [part for line in lines for part in (textwrap.wrap(line, MD_WIDTH, break_on_hyphens=False) or [""])]
    return "\n".join("> " + escape(line, quote=False) for line in wrapped)


def study_summary(out: Path, key: str, records: list[dict[str, Any]]) -> dict[str, str]:
    """PHI-free facts of a study for the reports: modality, body part, image count, bundle(s),
    run date(s), number of questions."""
    facts = study_facts(out, key)
    dates = sorted({str(r.get("created", ""))[:10] for r in records if r.get("created")})
    bundles = sorted({str((r.get("model") or {}).get("bundle") or "") for r in records} - {""})
    return {
        "modality": ", ".join(facts.get("modality") or []) or "unknown",
        "body part": ", ".join(facts.get("body_part") or []) or "not stated",
        "images": str(facts.get("images", len(thumbnails(out, key)))),
        "bundle": ", ".join(bundles) or "unknown",
        "run": dates[0] if len(dates) == 1 else (f"{dates[0]} to {dates[-1]}" if dates else "unknown"),
        "questions": str(len({r.get("question") for r in records})),
    }


def render_markdown(out: Path, results: list[dict[str, Any]], errors: list[dict[str, Any]], *, thumbnails: str = "safe") -> str:
    lines = ["# huatuo batch report", "", f"**{NOTICE}**", "",
             f"{len(_by_study(results))} studies, {len(results)} answers, {len(errors)} errors.", ""]
    for key, records in _by_study(results).items():
        lines += [f"## Study `{_line(key)}`", ""]
        summary = study_summary(out, key, records)
        lines += [" · ".join(f"{name}: {escape(_line(value), quote=False)}" for name, value in summary.items()), ""]
        shown, notes = shown_thumbnails(out, key, thumbnails)
        lines += [f"*Note: {escape(note, quote=False)}*" for note in notes] + ([""] if notes else [])
        for thumb in shown:
            lines.append(f"![image seen by the model]({THUMBS_DIR}/{thumb.name})")
        lines.append("")
        for r in records:
            truncated = " *(cut off at the max-tokens limit)*" if r.get("stopped_by") == "max-tokens" else ""
            lines += [f"**Q:** {escape(_line(r['question']), quote=False)}", "", _md_text(r["answer"]), "",
                      (f"<sub>model {escape(_line(r['model'].get('model_sha256', ''))[:12], quote=False)}, window "
                       f"{escape(_line(r.get('window')), quote=False)}, "
                       f"{r['tokens']} tokens, {r['tokens_per_s']} tokens/s</sub>{truncated}"), ""]
    if errors:
        lines += ["## Errors", "", "| kind | item | question | reason |", "|---|---|---|---|"]
        for e in errors:
            cells = [e["kind"], shown_item(e), e.get("question") or "", e["reason"]]
            lines.append("| " + " | ".join(escape(_line(c), quote=False).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


_STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
.notice{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}
.study{border-top:1px solid #ccc;margin-top:1.5em}
.thumbs img{max-height:200px;margin:.2em;border:1px solid #999}
.answer{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:.5em}
h3{overflow-wrap:anywhere} .facts{color:#333} .k{font-weight:bold} .note{background:#fde8e8;padding:.2em .5em}
.thumbs img{image-rendering:pixelated}
.meta{color:#666;font-size:80%} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.2em .5em}"""


def render_html(out: Path, results: list[dict[str, Any]], errors: list[dict[str, Any]], *, thumbnails: str = "safe") -> str:
    e = escape
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
             # forbid every external load, even if some text slipped through unescaped
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
             'style-src \'unsafe-inline\'">',
             f"<title>huatuo batch report</title><style>{_STYLE}</style></head><body>",
             "<h1>huatuo batch report</h1>", f'<p class="notice">{e(NOTICE)}</p>',
             f"<p>{len(_by_study(results))} studies, {len(results)} answers, {len(errors)} errors.</p>",
             card_link_html(out)]
    for key, records in _by_study(results).items():
        parts.append(f'<section class="study"><h2>Study <code>{e(_line(key))}</code></h2>')
        summary = study_summary(out, key, records)
        parts.append('<p class="facts">' + " · ".join(f"<span class=\"k\">{e(name)}</span>: {e(_line(value))}"
                                                      for name, value in summary.items()) + "</p>")
        shown, notes = shown_thumbnails(out, key, thumbnails)
        parts += [f'<p class="note">{e(note)}</p>' for note in notes]
        parts.append('<div class="thumbs">')
        for thumb in shown:
            data = base64.b64encode(thumb.read_bytes()).decode("ascii")
            parts.append(f'<img alt="image seen by the model" src="data:image/png;base64,{data}">')
        parts.append("</div>")
        for r in records:
            truncated = " (cut off at the max-tokens limit)" if r.get("stopped_by") == "max-tokens" else ""
            parts.append(f"<h3>{e(_line(r['question']))}</h3>"
                         f"<div class=\"answer\">{e(clean_text(r['answer']) or '(no answer)')}</div>"
                         f"<p class=\"meta\">model {e(_line(r['model'].get('model_sha256', ''))[:12])}, window "
                         f"{e(_line(r.get('window')))}, {r['tokens']} tokens, {r['tokens_per_s']} tokens/s"
                         f"{e(truncated)}</p>")
        parts.append("</section>")
    if errors:
        parts.append("<h2>Errors</h2><table><tr><th>kind</th><th>item</th><th>question</th><th>reason</th></tr>")
        for err in errors:
            cells = (err.get("kind"), shown_item(err), err.get("question"), err.get("reason"))
            parts.append("<tr>" + "".join(f"<td>{e(_line(c or ''))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_reports(out: Path, results: list[dict[str, Any]], errors: list[dict[str, Any]], *,
                  thumbnails: str = "safe") -> tuple[Path, Path]:
    md = write_private(out / REPORT_MD, render_markdown(out, results, errors, thumbnails=thumbnails))
    html = write_private(out / REPORT_HTML, render_html(out, results, errors, thumbnails=thumbnails))
    return md, html
