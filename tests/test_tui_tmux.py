"""`huatuo tui` in a real terminal: tmux at 120x40, keys sent with send-keys, screen read with
capture-pane. A new reader's path: the help line says which keys to press; pick a series, switch
to the lung window, ask, read the streamed answer and the notice, quit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from huatuo_cli import audit
from huatuo_cli.privacy import NOTICE
from tests.tui_helpers import studies_folder

pytestmark = pytest.mark.slow
QUESTION = "Is there a pneumothorax?"


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], check=True, capture_output=True,
                          text=True).stdout


def wait_for(session: str, *texts: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = capture(session)
        if all(t in screen for t in texts):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"never saw {texts!r} on screen:\n{screen}")


def keys(session: str, *keys: str) -> None:
    subprocess.run(["tmux", "send-keys", "-t", session, *keys], check=True)


@pytest.fixture
def tmux_session(tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: `make system-deps` installs it")
    name = f"huatuo-tui-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], check=False, capture_output=True)


def start(session: str, args: str) -> None:
    """`huatuo tui ARGS` in a new 120x40 tmux session, with the test's isolated user folders."""
    env = {k: v for k, v in os.environ.items() if k.startswith("XDG_")}
    huatuo = Path(sys.executable).with_name("huatuo")
    # COLUMNS/LINES, when the test runner exports them (80x24 here), win over the terminal's own
    # size in Textual: the pane is 120x40, so they must not leak into it
    command = f"unset COLUMNS LINES; {huatuo} tui {args}; echo huatuo-exited-$?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                    *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], command], check=True)


def test_pick_series_lung_window_ask_and_read_the_answer(tmp_path, tiny_bundle, tmux_session):
    folder = studies_folder(tmp_path / "studies")
    # half-blocks: what tmux 3.3 gets with --graphics auto; forced, so that a tmux built with
    # Sixel (3.4+) does not change what capture-pane reads back
    start(tmux_session, f"{folder} --model {tiny_bundle} --export-dir {tmp_path} --graphics halfblock")
    screen = wait_for(tmux_session, f"model {tiny_bundle.name}", "window auto")
    for hint in ("q Quit", "? Help", "i Ask", "w Window", "Press i (or Enter on a series)"):
        assert hint in screen  # the help line tells a new reader what to do
    assert "#1 CT" in screen and "CompressedSamples" not in screen

    keys(tmux_session, "w")  # the first series (the CT) is highlighted: lung window
    wait_for(tmux_session, "window lung", "lung (C=-600 W=1500)")
    keys(tmux_session, "Enter")  # Enter on the series focuses the question box
    time.sleep(0.5)
    keys(tmux_session, "-l", QUESTION)
    keys(tmux_session, "Enter")
    screen = wait_for(tmux_session, NOTICE[:40])
    lines = [line for line in screen.splitlines()]
    asked = next(i for i, line in enumerate(lines) if QUESTION in line)
    answer = "".join(line[74:] for line in lines[asked + 3 : asked + 6])
    assert answer.strip("│ ") != "", screen  # the answer text sits between the question and the notice
    assert "tok/s" in screen

    keys(tmux_session, "Escape")  # out of the question box (apart from the q: ESC q reads as alt+q)
    time.sleep(0.5)
    keys(tmux_session, "q")
    wait_for(tmux_session, "huatuo-exited-0", timeout=30)
    log = Path(os.environ["XDG_CACHE_HOME"]) / "huatuo" / "tui-native-stderr.log"
    assert log.is_file()  # llama.cpp's and ONNX Runtime's own messages went there, not on the screen
    entries = audit.read_entries()
    assert [(e["command"], e["outcome"], e["question"]) for e in entries] == [("tui", "ok", QUESTION)]


def test_auto_graphics_starts_and_quits(tmp_path, tmux_session):
    """The terminal query textual-image makes before the app starts must not hang or garble it."""
    start(tmux_session, f"{studies_folder(tmp_path / 'studies')} --no-model")
    wait_for(tmux_session, "browsing only", "q Quit")
    keys(tmux_session, "q")
    wait_for(tmux_session, "huatuo-exited-0", timeout=30)
