"""Material for the TUI tests: a folder of sample studies and a Pilot that waits for the workers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from demo.samples import sample_file, write_sample_studies

#: the pydicom file names in the folder and the patient names some of them carry
MULTIFRAME = "emri_small.dcm"  # MR, HEAD, 10 frames
NAMES = ("CompressedSamples", "Lestrade")


def studies_folder(root: Path) -> Path:
    """`python -m demo.samples studies` (CT, MR, SC) plus a 10-frame MR of the head."""
    write_sample_studies(root)
    (root / "export2" / "cine").mkdir(parents=True)
    shutil.copy(sample_file(MULTIFRAME), root / "export2" / "cine" / "IM0003")
    return root


async def settle(pilot: Any, until: Any = None, timeout: float = 60.0, *, workers: bool = True) -> None:
    """Let the app's workers finish (unless `workers` is False) and `until()` become true, then
    let the UI catch up."""
    app = pilot.app
    waited = 0.0
    while True:
        if workers:
            await app.workers.wait_for_complete()
        await pilot.pause()
        if until is None or until():
            return
        if waited > timeout:
            raise AssertionError("the app did not get there in time")
        await pilot.pause(0.05)
        waited += 0.05


def select_series(app: Any, modality: str, *, frames: int | None = None) -> None:
    """Move the tree cursor to the first series of `modality` (as the arrow keys would)."""
    tree = app.study_tree
    for line in range(tree.last_line + 1):
        node = tree.get_node_at_line(line)
        if node is not None and isinstance(node.data, tuple):
            series = node.data[1]
            if series.modality == modality and (frames is None or series.number_of_frames == frames):
                tree.move_cursor_to_line(line)
                return
    raise AssertionError(f"no {modality} series in the tree")


def screen_text(app: Any) -> str:
    """The text of the current screen's widgets: tree labels, static texts, notifications, footer keys."""
    from textual.widgets import Static, Tree
    from textual.widgets._toast import Toast

    parts: list[str] = []
    for tree in app.screen.query(Tree):
        parts += [tree.get_node_at_line(line).label.plain for line in range(tree.last_line + 1)]
    parts += [str(widget.content) for widget in app.screen.query(Static) if not isinstance(widget, Toast)]
    parts += [str(toast.render()) for toast in app.screen.query(Toast)]  # notifications draw themselves
    return "\n".join(parts)
