"""Snapshot tests of `huatuo tui` at 120x40 with the half-block renderer (pytest-textual-snapshot).

The folder is scanned from pydicom's fixed test files (stable keys) and no model is loaded, so
every run draws the same screen. Update after an intended change with `--snapshot-update` and
look at the SVGs in tests/__snapshots__/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from huatuo_cli.tui.app import make_app
from tests.tui_helpers import select_series, settle, studies_folder

SIZE = (120, 40)


@pytest.fixture
def app(tmp_path: Path):
    return make_app(studies_folder(tmp_path / "studies"), load_model=False, graphics="halfblock", export_dir=tmp_path)


async def ready(pilot) -> None:
    await settle(pilot, lambda: pilot.app.picture is not None)


def test_opens_on_the_first_series(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_ct_in_the_lung_window(app, snap_compare):
    async def lung(pilot) -> None:
        await ready(pilot)
        select_series(pilot.app, "CT")
        await pilot.press("w")
        await settle(pilot, lambda: pilot.app.view.window == "lung" and pilot.app.picture[0] == pilot.app.view.key())

    assert snap_compare(app, terminal_size=SIZE, run_before=lung)


def test_multiframe_series_next_frame(app, snap_compare):
    async def frame(pilot) -> None:
        await ready(pilot)
        select_series(pilot.app, "MR", frames=10)
        await settle(pilot, lambda: pilot.app.view.series.number_of_frames == 10)
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: pilot.app.picture[0] == pilot.app.view.key())

    assert snap_compare(app, terminal_size=SIZE, run_before=frame)


def test_help(app, snap_compare):
    async def help_screen(pilot) -> None:
        await ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=help_screen)
