"""Where the viewer is in a series: which image (instance and frame) and which window.

Plain Python, no textual: the app keeps one `View` and asks it for the next frame or window, so
the same rules are tested without a terminal. A series is browsed as the radiologist scrolls it:
every frame of every instance, stack by stack in slice order, starting at the middle image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from huatuo_cli.imaging import CT_PRESETS, Instance, Series, Study

#: `w` cycles through these, in the order `huatuo inspect --help` lists the presets
WINDOW_CYCLE: tuple[str, ...] = ("auto", "lung", "mediastinum", "abdomen", "liver", "bone", "brain",
                                 "subdural", "stroke", "temporal-bone", "soft-tissue")
assert set(WINDOW_CYCLE[1:]) == set(CT_PRESETS), "a CT preset is missing from the window cycle"


def positions(series: Series) -> list[tuple[Instance, int]]:
    """Every (instance, frame) of the series in viewing order."""
    return [(instance, frame) for instance in series.instances for frame in range(instance.number_of_frames)]


@dataclass(frozen=True)
class View:
    """One image on screen: a series, a position in it and a window name from WINDOW_CYCLE."""

    study: Study
    series: Series
    index: int
    window: str = "auto"

    @classmethod
    def middle(cls, study: Study, series: Series, window: str = "auto") -> View:
        """The series opened at its middle image (the one a reader looks at first)."""
        reps = series.representatives(1)
        flat = positions(series)
        index = flat.index((reps[0].instance, reps[0].frame)) if reps else 0
        return cls(study, series, index, window)

    @property
    def count(self) -> int:
        return len(positions(self.series))

    @property
    def image(self) -> tuple[Instance, int]:
        return positions(self.series)[self.index]

    def step(self, delta: int) -> View:
        """Another image of the series; stops at either end (no wrap: the reader knows where they are)."""
        return replace(self, index=max(0, min(self.count - 1, self.index + delta)))

    def with_window(self, name: str) -> View:
        return replace(self, window=name)

    def cycle_window(self, delta: int) -> View:
        here = WINDOW_CYCLE.index(self.window) if self.window in WINDOW_CYCLE else 0
        return self.with_window(WINDOW_CYCLE[(here + delta) % len(WINDOW_CYCLE)])

    def key(self) -> tuple[str, str, int, str]:
        """What identifies the picture the model is shown (PHI-free)."""
        return (self.study.key, self.series.key, self.index, self.window)

    def describe(self) -> str:
        """PHI-free one-liner: 'series 3 (1521758bf64b) · image 5/40 · window lung'."""
        number = f"series {self.series.number} " if self.series.number is not None else "series "
        return f"{number}({self.series.key}) · image {self.index + 1}/{self.count} · window {self.window}"
