"""Batch progress on stderr: a rich bar with ETA on a terminal, one plain line per study otherwise
(log files and CI). Labels are PHI-free study keys; nothing else about a study is printed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import TaskID

import sys
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def step(self, label: str, status: str) -> None: ...
    def close(self) -> None: ...


class PlainProgress:
    """`[3/12] <label>: <status>` per study, flushed at once so `tail -f` follows along."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def step(self, label: str, status: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {label}: {status}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar with elapsed time and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=False)
        self.task: TaskID | None = None

    def start(self, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("studies", total=total)

    def step(self, label: str, status: str) -> None:
        assert self.task is not None, "start() first"
        self.bar.update(self.task, advance=1, description=f"{label}: {status}")

    def close(self) -> None:
        self.bar.stop()


def make_progress(stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    return RichProgress() if stream.isatty() else PlainProgress(stream)
