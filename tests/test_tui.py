"""`huatuo tui` driven with Textual's Pilot on a folder of sample studies and the tiny bundle.

No mocks: the real scan, imaging, engine (tiny random bundle), audit trail and privacy writer.
The oracle for the streamed answer is `Conversation.ask` run directly on the same picture, which
is what `huatuo ask` runs.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydicom import dcmread

from demo.samples import sample_file
from huatuo_cli import audit
from huatuo_cli.engine.llm import Sampling
from huatuo_cli.engine.session import Conversation, VisionLanguageModel
from huatuo_cli.imaging import load_image
from huatuo_cli.privacy import NOTICE
from huatuo_cli.tui.app import HuatuoApp, make_app
from tests.tui_helpers import NAMES, screen_text, select_series, settle, studies_folder

pytestmark = pytest.mark.asyncio
SIZE = (120, 40)
QUESTION = "Is there a nodule?"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return studies_folder(tmp_path / "studies")


def ct_uid() -> str:
    return str(dcmread(sample_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID)


def oracle_answer(bundle: Path, window: str, question: str = QUESTION) -> str:
    """What `huatuo ask --window W CT_small.dcm QUESTION` answers: the same engine, run directly."""
    model = VisionLanguageModel(bundle)
    try:
        picture = load_image(sample_file("CT_small.dcm"), window=window, frame=0).frames[0]
        return Conversation(model, images=[picture]).ask(question, Sampling()).text
    finally:
        model.close()


async def test_browse_series_windows_frames_and_names(folder, tmp_path):
    app = make_app(folder, load_model=False, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.picture is not None)
        text = screen_text(app)
        assert text.count("study ") >= 4 and "MR · HEAD · 10 images" in text
        assert not any(name in text for name in NAMES)  # names stay hidden until asked for
        assert "Pick a series" in text or "image 1/1" in text

        select_series(app, "MR", frames=10)
        await settle(pilot, lambda: app.view.series.number_of_frames == 10 and app.picture[0] == app.view.key())
        assert app.view.index == 5  # opened at the middle image
        first = app.picture[1].tobytes()
        for key, index in (("right_square_bracket", 6), ("pagedown", 7), ("left_square_bracket", 6), ("pageup", 5)):
            await pilot.press(key)
            await settle(pilot, lambda: app.picture[0] == app.view.key())
            assert app.view.index == index
            assert f"image {index + 1}/10" in screen_text(app)
        assert app.picture[1].tobytes() == first  # back on the middle frame: the same picture
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: app.picture[0] == app.view.key())
        assert app.picture[1].tobytes() != first  # another frame is another picture

        select_series(app, "CT")
        await settle(pilot, lambda: app.view.series.modality == "CT" and app.picture[0] == app.view.key())
        auto = app.picture[1].tobytes()
        await pilot.press("w")
        await settle(pilot, lambda: app.picture[0] == app.view.key())
        assert app.view.window == "lung" and "lung (C=-600 W=1500)" in screen_text(app)
        assert app.picture[1].tobytes() != auto
        assert app.picture[1].tobytes() == load_image(sample_file("CT_small.dcm"), window="lung").frames[0].tobytes()
        await pilot.press("W")
        await settle(pilot, lambda: app.picture[0] == app.view.key())
        assert app.view.window == "auto" and app.picture[1].tobytes() == auto
        await pilot.press("ctrl+p", *"window: bone")  # the command palette knows the preset names
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot, lambda: app.view.window == "bone" and app.picture[0] == app.view.key())
        assert "bone (C=400 W=1800)" in screen_text(app)

        await pilot.press("n")
        await settle(pilot, lambda: app.study_tree.names_shown)
        assert "CompressedSamples CT1" in screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert not any(name in screen_text(app) for name in NAMES)

        await pilot.press("question_mark")
        await pilot.pause()
        assert "w / W" in screen_text(app) and NOTICE in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("i")  # no model: says so instead of failing
        await pilot.pause()
        assert "no model loaded" in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def wait_answer(pilot, app: HuatuoApp, count: int = 1) -> None:
    chat = app.chats.get(app.view.study.key)
    await settle(pilot, lambda: app.answering is None and chat is not None and len(chat.exchanges) >= count
                 or (app.chats.get(app.view.study.key) is not None
                     and len(app.chats[app.view.study.key].exchanges) >= count and app.answering is None), 120)


async def ask(pilot, app: HuatuoApp, question: str) -> None:
    if app.focused is not app.chat_pane.question_box:  # focused already (after a stop): `i` would be typed
        await pilot.press("i")
    assert app.focused is app.chat_pane.question_box
    await pilot.press(*question)
    await pilot.press("enter")


async def test_ask_streams_the_engine_answer_audits_and_exports(folder, tmp_path, tiny_bundle):
    expected = oracle_answer(tiny_bundle, "lung")
    app = make_app(folder, model=tiny_bundle, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        assert f"model {tiny_bundle.name}" in screen_text(app)
        assert app.model.info.vision_provider in screen_text(app) and app.model.info.llm_cpu in screen_text(app)
        select_series(app, "CT")
        await pilot.press("w")
        await settle(pilot, lambda: app.view.window == "lung" and app.picture[0] == app.view.key())

        seen: list[str] = []  # the answer as the reader sees it, sampled while it streams
        stream = app.chat_pane.stream

        def watch(text: str) -> None:
            stream(text)
            seen.append(app.chat_pane._answer_text)

        app.chat_pane.stream = watch  # type: ignore[method-assign]  # observe, do not replace
        await ask(pilot, app, QUESTION)
        await wait_answer(pilot, app)
        chat = app.chats[app.view.study.key]
        assert chat.exchanges[0].outcome == "ok" and chat.exchanges[0].answer == expected
        assert len(seen) > 3 and seen[0] != seen[-1] and expected.startswith(seen[0].strip())  # token by token
        assert "window lung" in chat.exchanges[0].shown
        text = screen_text(app)
        assert text.count(NOTICE) == 1 and "tok/s" in text

        entries = audit.read_entries()
        assert [(e["command"], e["outcome"], e["question"]) for e in entries] == [("tui", "ok", QUESTION)]
        assert entries[0]["answer_chars"] == len(expected) and entries[0]["study"] == audit.study_ref(ct_uid())
        assert entries[0]["model_sha256"] == app.model.info.model_sha256

        await ask(pilot, app, "And the other lung?")  # a follow-up: the engine sees the history
        await wait_answer(pilot, app, 2)
        assert len(chat._conversation.turns) == 2 and screen_text(app).count(NOTICE) == 2
        assert len(audit.read_entries()) == 2

        await pilot.press("escape")  # out of the question box
        assert app.focused is app.study_tree
        select_series(app, "MR", frames=10)  # another study: its own (empty) history
        await settle(pilot, lambda: app.view.series.modality == "MR")
        assert QUESTION not in screen_text(app)
        select_series(app, "CT")
        await settle(pilot, lambda: app.view.series.modality == "CT")
        assert QUESTION in screen_text(app) and screen_text(app).count(NOTICE) == 2

        await pilot.press("e")
        await pilot.pause()
        exports = list(tmp_path.glob("huatuo-chat-*.md"))
        assert len(exports) == 1 and stat.S_IMODE(exports[0].stat().st_mode) == 0o600
        markdown = exports[0].read_text()
        assert QUESTION in markdown and expected in markdown and markdown.count(NOTICE) >= 3
        assert ct_uid() not in markdown and not any(name in markdown for name in NAMES)
        assert "conversation exported" in screen_text(app)


async def test_escape_stops_the_answer_and_the_next_one_is_whole(folder, tmp_path, tiny_bundle):
    expected = oracle_answer(tiny_bundle, "auto", "Describe the image.")
    app = make_app(folder, model=tiny_bundle, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        select_series(app, "CT")
        await settle(pilot, lambda: app.view.series.modality == "CT" and app.picture[0] == app.view.key())
        stream = app.chat_pane.stream
        pressed: list[int] = []

        def press_escape_on_first_text(text: str) -> None:
            """The reader presses Escape as soon as the answer starts to appear (a real key event,
            queued behind this piece of text, as a key pressed while it is drawn would be)."""
            stream(text)
            if not pressed:
                pressed.append(len(app.chat_pane._answer_text))
                app.simulate_key("escape")

        app.chat_pane.stream = press_escape_on_first_text  # type: ignore[method-assign]
        await ask(pilot, app, "Describe the image.")
        await wait_answer(pilot, app)
        app.chat_pane.stream = stream  # type: ignore[method-assign]
        chat = app.chats[app.view.study.key]
        stopped = chat.exchanges[0]
        assert stopped.outcome == "stopped" and 0 < len(stopped.answer) < len(expected)
        assert expected.startswith(stopped.answer.strip())
        assert "[stopped]" in screen_text(app) and NOTICE in screen_text(app)
        assert [e["outcome"] for e in audit.read_entries()] == ["stopped"]
        assert audit.read_entries()[0]["answer_chars"] == len(stopped.answer)

        await ask(pilot, app, "Describe the image.")  # the engine is usable after a stop
        await wait_answer(pilot, app, 2)
        again = chat.exchanges[1]
        assert again.outcome == "ok" and again.answer.startswith(stopped.answer.strip()) and len(again.answer) > len(stopped.answer)
        # the stopped answer is not in the model's history: the question was asked afresh. (Not
        # compared with `expected` to the end: llama.cpp, re-decoding only the last prompt position
        # from its cache, rounds differently from a whole prefill, and greedy decoding on random
        # weights flips at near-ties.)
        assert len(chat._conversation.turns) == 1


async def test_failures_are_notifications_not_tracebacks(folder, tmp_path):
    from tests.batch_helpers import sample_folder

    sample_folder(folder / "more", truncated=True, text_file=True)  # a truncated DICOM and a text file
    app = make_app(folder, model=tmp_path / "not-a-bundle", graphics="halfblock", export_dir=tmp_path / "gone")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.picture is not None)
        text = screen_text(app)
        assert "not a model bundle" in text and "none (pass --model BUNDLE)" in text
        assert "file(s) skipped" in text
        for line in range(app.study_tree.last_line + 1):  # the truncated CT: its header scans, its pixels do not
            node = app.study_tree.get_node_at_line(line)
            if isinstance(node.data, tuple) and node.data[1].instances[0].path.parent.name == "broken":
                app.study_tree.move_cursor_to_line(line)
        await settle(pilot, lambda: app.view.series.instances[0].path.parent.name == "broken")
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "cannot be shown: truncated file" in text and text.count("hint:") == 1 and "Traceback" not in text and "broken" not in text
        await pilot.press("e")
        await pilot.pause()
        assert "nothing to export yet" in screen_text(app)
        assert app.is_running


async def test_quitting_while_an_answer_streams_stops_it_and_audits_it(folder, tmp_path, tiny_bundle):
    app = make_app(folder, model=tiny_bundle, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        stream = app.chat_pane.stream

        def quit_on_first_text(text: str) -> None:
            stream(text)
            app.simulate_key("ctrl+q")  # ctrl+q: a plain q would be typed into the question box

        app.chat_pane.stream = quit_on_first_text  # type: ignore[method-assign]
        await ask(pilot, app, "Describe the image.")
        await settle(pilot, lambda: not app.is_running, 30, workers=False)
    assert app.return_code == 0
    assert [e["outcome"] for e in audit.read_entries()] == ["stopped"]


async def test_the_model_card_is_one_key_away_and_hash_checked(folder, tmp_path, tiny_bundle):
    """issue 15: the TUI shows the bundle's card (the same summary as `models info`)."""
    app = make_app(folder, model=tiny_bundle, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        await pilot.press("c")
        await pilot.pause()
        text = screen_text(app)
        assert "model card" in text and "HuatuoGPT-Vision-7B" in text and "Traceback" not in text


# -- the one answering path (issue 20 item 2): the TUI answers under the rules ask and batch follow ------

async def test_unwritable_audit_trail_refuses_the_model_on_screen(folder, tmp_path, tiny_bundle, monkeypatch):
    """As `ask` and `batch` refuse before answering: no model, so nothing can be answered unaudited."""
    blocker = tmp_path / "data-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocker))  # the audit trail would live under a file
    app = make_app(folder, model=tiny_bundle, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: "cannot write the audit trail" in screen_text(app) and app.picture is not None)
        assert app.model is None and app.chat_pane.question_box.disabled
        assert "nothing was answered" in screen_text(app)


async def test_a_question_the_rules_refuse_is_refused_on_screen(folder, tmp_path, tiny_bundle):
    app = make_app(folder, model=tiny_bundle, graphics="halfblock", export_dir=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: app.model is not None and app.picture is not None)
        select_series(app, "CT")
        await settle(pilot, lambda: app.view.series.modality == "CT" and app.picture[0] == app.view.key())
        await ask(pilot, app, "<image>")  # empty once the official moderation has removed the marker
        await settle(pilot, lambda: "empty question" in screen_text(app))
        assert not app.chats or not any(chat.exchanges for chat in app.chats.values())
        assert audit.read_entries() == []


async def test_tui_takes_the_shared_model_and_decoding_options():
    from click.testing import CliRunner

    from huatuo_cli.cli import cli

    res = CliRunner().invoke(cli, ["tui", "--help"], terminal_width=200)
    for option in ("--model", "--device", "--threads", "--vision", "--max-tokens", "--temperature", "--top-p",
                   "--seed", "--repetition-penalty"):
        assert option in res.output, option
