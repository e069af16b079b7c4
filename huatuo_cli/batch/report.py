"""report.md and a self-contained report.html for a batch folder.

Both are rebuilt from results.jsonl, errors.jsonl and the thumbnails saved as studies finished, so
a resumed batch reports every study, not only those of the last run. The HTML embeds thumbnails
as base64 PNG and loads nothing from anywhere (no scripts, fonts or style sheets from outside):
it opens on an air-gapped workstation and can be mailed as one file. Every text is escaped.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from pathlib import Path

from huatuo_cli.privacy import NOTICE, private_dir, write_private

THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def study_slug(key: str) -> str:
    """File-name-safe, stable name for a study key (keys may hold any character)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def save_thumbnails(out: Path, key: str, images: list) -> list[Path]:
    """PNG thumbnails of the images the model saw, owner-only, under OUT/thumbs/."""
    from io import BytesIO

    folder = private_dir(out / THUMBS_DIR)
    paths = []
    for i, image in enumerate(images):
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buffer = BytesIO()
        thumb.save(buffer, format="PNG")
        paths.append(write_private(folder / f"{study_slug(key)}-{i}.png", buffer.getvalue()))
    return paths


def thumbnails(out: Path, key: str) -> list[Path]:
    folder = out / THUMBS_DIR
    found = list(folder.glob(f"{study_slug(key)}-*.png")) if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def _by_study(results: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in results:
        grouped.setdefault(record["study"], []).append(record)
    return grouped


def shown_item(error: dict) -> str:
    """How an error's item appears in a report. Unusable files are keyed by their path in
    errors.jsonl (owner-only, so the user can find them), but export folders are often named after
    patients: reports, made to be shared, show a hash of the path instead."""
    if error.get("kind") == "file":
        return "file-" + hashlib.sha256(str(error.get("key", "")).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return str(error.get("key") or "")


def _md_text(text: str) -> str:
    """Markdown-safe block: quote each line so model output cannot start headings or HTML blocks."""
    return "\n".join("> " + escape(line, quote=False) for line in (text or "(no answer)").splitlines() or [""])


def render_markdown(out: Path, results: list[dict], errors: list[dict]) -> str:
    lines = ["# huatuo batch report", "", f"**{NOTICE}**", "",
             f"{len(_by_study(results))} studies, {len(results)} answers, {len(errors)} errors.", ""]
    for key, records in _by_study(results).items():
        lines += [f"## Study `{key}`", ""]
        for thumb in thumbnails(out, key):
            lines.append(f"![image seen by the model]({THUMBS_DIR}/{thumb.name})")
        lines.append("")
        for r in records:
            lines += [f"**Q:** {escape(r['question'], quote=False)}", "", _md_text(r["answer"]), "",
                      f"<sub>model {r['model'].get('model_sha256', '')[:12]}, window {r.get('window')}, "
                      f"{r['tokens']} tokens, {r['tokens_per_s']} tokens/s</sub>", ""]
    if errors:
        lines += ["## Errors", "", "| kind | item | question | reason |", "|---|---|---|---|"]
        for e in errors:
            cells = [e["kind"], shown_item(e), e.get("question") or "", e["reason"]]
            lines.append("| " + " | ".join(escape(c, quote=False).replace("|", "\\|").replace("\n", " ")
                                           for c in cells) + " |")
    return "\n".join(lines) + "\n"


_STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
.notice{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}
.study{border-top:1px solid #ccc;margin-top:1.5em}
.thumbs img{max-height:200px;margin:.2em;border:1px solid #999}
.answer{white-space:pre-wrap;background:#f6f6f6;padding:.5em}
.meta{color:#666;font-size:80%} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.2em .5em}"""


def render_html(out: Path, results: list[dict], errors: list[dict]) -> str:
    e = escape
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
             # forbid every external load, even if some text slipped through unescaped
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
             'style-src \'unsafe-inline\'">',
             f"<title>huatuo batch report</title><style>{_STYLE}</style></head><body>",
             "<h1>huatuo batch report</h1>", f'<p class="notice">{e(NOTICE)}</p>',
             f"<p>{len(_by_study(results))} studies, {len(results)} answers, {len(errors)} errors.</p>"]
    for key, records in _by_study(results).items():
        parts.append(f'<section class="study"><h2>Study <code>{e(key)}</code></h2><div class="thumbs">')
        for thumb in thumbnails(out, key):
            data = base64.b64encode(thumb.read_bytes()).decode("ascii")
            parts.append(f'<img alt="image seen by the model" src="data:image/png;base64,{data}">')
        parts.append("</div>")
        for r in records:
            parts.append(f"<h3>{e(r['question'])}</h3><div class=\"answer\">{e(r['answer'] or '(no answer)')}</div>"
                         f"<p class=\"meta\">model {e(r['model'].get('model_sha256', '')[:12])}, window "
                         f"{e(str(r.get('window')))}, {r['tokens']} tokens, {r['tokens_per_s']} tokens/s</p>")
        parts.append("</section>")
    if errors:
        parts.append("<h2>Errors</h2><table><tr><th>kind</th><th>item</th><th>question</th><th>reason</th></tr>")
        for err in errors:
            cells = (err.get("kind"), shown_item(err), err.get("question"), err.get("reason"))
            parts.append("<tr>" + "".join(f"<td>{e(str(c or ''))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_reports(out: Path, results: list[dict], errors: list[dict]) -> tuple[Path, Path]:
    md = write_private(out / REPORT_MD, render_markdown(out, results, errors))
    html = write_private(out / REPORT_HTML, render_html(out, results, errors))
    return md, html
