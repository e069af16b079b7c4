"""Keep native libraries' messages off the screen while the app draws.

Textual draws on file descriptor 2 (`sys.__stderr__`). llama.cpp and ONNX Runtime write their own
warnings to descriptor 2 straight from C, so they would land in the middle of the picture and
shift everything after them. While the app runs, Textual gets a duplicate of the terminal and
descriptor 2 points at an owner-only log file in the user's cache folder instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from huatuo_cli import APP_NAME
from huatuo_cli.privacy import open_private_fd, private_dir

LOG_NAME = "tui-native-stderr.log"


def native_log_path() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME)) / LOG_NAME


@contextmanager
def native_stderr_to_log(log: Path | None = None) -> Iterator[Path]:
    """Descriptor 2 -> `log` (appended) for the duration; `sys.__stderr__` -> the terminal."""
    log = log or native_log_path()
    private_dir(log.parent)
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = os.fdopen(terminal_fd, "w", encoding=sys.__stderr__.encoding if sys.__stderr__ else "utf-8",
                         errors="replace", closefd=False)
    log_fd = open_private_fd(log, os.O_WRONLY | os.O_APPEND)
    saved = sys.__stderr__
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.__stderr__ = terminal  # type: ignore[misc]  # Textual's driver reads it when the app starts
    try:
        yield log
    finally:
        terminal.flush()
        os.dup2(terminal_fd, 2)
        os.close(terminal_fd)
        sys.__stderr__ = saved  # type: ignore[misc]
