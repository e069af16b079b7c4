"""Progress bars for the long steps of a conversion (writing a 7B GGUF, quantizing), on stderr.

Shown only on a terminal, and removed when the step ends: piped or logged output stays the few
result lines the commands print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def step(label: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A bar (with `total`) or a spinner (without) for one step; yields `advance(*_)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda *_args: None
        return
    columns = [SpinnerColumn(), TextColumn(label)]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda *_args: progress.advance(task)
