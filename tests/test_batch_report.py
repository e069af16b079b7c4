"""report.md / report.html: everything escaped, HTML self-contained (no external resource)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from huatuo_cli.batch.report import render_markdown, save_thumbnails, write_reports
from huatuo_cli.privacy import NOTICE
from huatuo_cli.record import Answer, build_record

EVIL = '<script>alert("x")</script><img src="http://example.org/t.png"> & <a href="https://x">x</a>'


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def results() -> list[dict]:
    return [build_record(study="study-1", question=EVIL, answer=Answer(text=EVIL + "\n# not a heading"),
                         model={"model_sha256": "m" * 64}, inputs=["a" * 64], window="lung")]


def test_html_is_escaped_and_self_contained(tmp_path):
    image = Image.new("RGB", (600, 300), (200, 10, 10))
    save_thumbnails(tmp_path, "study-1", [image, image])
    errors = [{"kind": "file", "key": "x/<b>.dcm", "question": None, "reason": "not DICOM <i>"}]
    md, html_path = write_reports(tmp_path, results(), errors)
    html = html_path.read_text()
    parser = Tags()
    parser.feed(html)
    names = [t for t, _ in parser.tags]
    assert "script" not in names and "a" not in names and "link" not in names and "b" not in names
    srcs = [a["src"] for t, a in parser.tags if "src" in a]
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not [a for _, a in parser.tags if "href" in a]
    assert "&lt;script&gt;" in html and NOTICE in html
    thumb = Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1])))
    assert thumb.format == "PNG" and max(thumb.size) == 256 and thumb.getpixel((5, 5)) == (200, 10, 10)
    for path in (md, html_path):
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_markdown_quotes_model_output(tmp_path):
    text = render_markdown(tmp_path, results(), [])
    assert "<script>" not in text and "\n# not a heading" not in text and "> # not a heading" in text
    assert NOTICE in text


def test_reports_hash_bad_file_paths_that_errors_jsonl_keeps(tmp_path):
    """errors.jsonl (owner-only) names the unusable file so it can be found; the shareable
    reports show only a hash of its path, since export folders are often patient names."""
    from huatuo_cli.batch.report import render_html, render_markdown, shown_item

    errors = [{"kind": "file", "key": "DOE^JOHN/IM0001", "question": None, "reason": "truncated file"}]
    for text in (render_markdown(tmp_path, [], errors), render_html(tmp_path, [], errors)):
        assert "DOE" not in text and "truncated file" in text
        assert shown_item(errors[0]) in text
