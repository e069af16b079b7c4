"""report.md / report.html: everything escaped, HTML self-contained (no external resource)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from huatuo_cli.answering.record import Answer, build_record
from huatuo_cli.batch.report import render_markdown, save_thumbnails, write_reports
from huatuo_cli.privacy import NOTICE

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


# --- per-study facts, caveats and thumbnails, through a real batch over real files -----------------

def _batch(tmp_path, names, thumbnails="safe", fn=None):
    import io
    import shutil

    from pydicom.data import get_testdata_file

    from huatuo_cli.answering.inputs import jobs_from_folder
    from huatuo_cli.batch.progress import PlainProgress
    from huatuo_cli.batch.runner import run_batch
    from tests.batch_helpers import describe

    root = tmp_path / "in"
    for i, name in enumerate(names):
        (root / f"s{i}").mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name, download=False), root / f"s{i}" / "IM0")
    out = tmp_path / f"out-{thumbnails}"
    model = {"model_sha256": "d" * 64, "bundle": "tiny-bundle-f16", "architecture": "llava-qwen2", "quantization": "f16"}
    run_batch(jobs_from_folder(root), ["Describe the image."], out, lambda: (fn or describe, model),
              progress=PlainProgress(io.StringIO()), root=root, thumbnails=thumbnails)
    return root, out


def _imgs(html: str) -> int:
    parser = Tags()
    parser.feed(html)
    return sum(1 for t, a in parser.tags if t == "img")


def test_reports_show_study_facts_and_no_phi(tmp_path):
    import datetime as dt

    import pydicom

    root, out = _batch(tmp_path, ["CT_small.dcm", "JPEG2000.dcm"])
    today = dt.datetime.now(dt.UTC).date().isoformat()
    for name in ("report.md", "report.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert "modality" in text and "CT" in text and "NM" in text
        assert "WHOLE BODY" in text and "not stated" in text  # JPEG2000.dcm's body part; CT_small has none
        assert "images" in text and "tiny-bundle-f16" in text and today in text and "questions" in text
        assert "Lossy-compressed source" in text  # JPEG2000.dcm: LossyImageCompression 01
        for path in root.rglob("IM0"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for value in (ds.PatientName, ds.PatientID, ds.StudyInstanceUID):
                assert str(value) not in text, name


def test_possible_burned_in_annotation_is_left_out_unless_asked(tmp_path):
    """US without BurnedInAnnotation and secondary capture: noted, thumbnail left out of the
    shareable report by default; --thumbnails all includes it, none shows no image at all."""
    names = ["CT_small.dcm", "ExplVR_BigEnd.dcm", "SC_rgb.dcm"]  # CT, US, secondary capture
    _, safe = _batch(tmp_path, names)
    html = (safe / "report.html").read_text(encoding="utf-8")
    assert _imgs(html) == 1 and html.count("may carry burned-in annotation") == 2
    assert html.count("left out of this shareable report") == 2
    md = (safe / "report.md").read_text(encoding="utf-8")
    assert md.count("![image seen by the model]") == 1
    _, every = _batch(tmp_path, names, thumbnails="all")
    assert _imgs((every / "report.html").read_text(encoding="utf-8")) == 3
    assert (every / "report.md").read_text(encoding="utf-8").count("![image seen by the model]") == 3
    _, none = _batch(tmp_path, names, thumbnails="none")
    assert _imgs((none / "report.html").read_text(encoding="utf-8")) == 0


def test_tiny_images_are_scaled_up_and_overlays_drawn_in_thumbnails(tmp_path):
    import numpy as np

    from huatuo_cli.batch.report import thumbnail

    tiny = Image.new("RGB", (16, 12), (10, 20, 30))
    tiny.putpixel((3, 4), (250, 0, 0))
    thumb = thumbnail(tiny)
    assert thumb.size == (256, 192) and thumb.getpixel((3 * 16 + 8, 4 * 16 + 8)) == (250, 0, 0)
    mask = np.zeros((12, 16), dtype=bool)
    mask[0, 0] = True
    assert thumbnail(tiny, mask).getpixel((1, 1)) == (255, 255, 255)
    # through a batch: the overlay file's thumbnail shows the overlay, the model's image does not
    seen = []

    def keep(images, question, study_id=None):
        from tests.batch_helpers import describe

        seen.extend(images)
        return describe(images, question)

    _, out = _batch(tmp_path, ["examples_overlay.dcm"], fn=keep)
    (png,) = (out / "thumbs").glob("*.png")
    drawn = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    plain = np.asarray(thumbnail(seen[0]), dtype=np.int16)  # the model's image, shrunk the same way
    assert drawn.shape == plain.shape and (np.abs(drawn - plain).max(axis=-1) > 40).sum() > 100


def test_long_answers_wrap(tmp_path):
    from huatuo_cli.batch.report import MD_WIDTH, render_html

    long = "word " * 100 + "x" * 300
    records = [build_record(study="s", question="q", answer=Answer(text=long), model={"model_sha256": "m"}, inputs=[],
                            window=None)]
    md = render_markdown(tmp_path, records, [])
    assert max(len(line) for line in md.splitlines() if line.startswith("> ")) <= MD_WIDTH + 2
    assert "overflow-wrap:anywhere" in render_html(tmp_path, records, [])
