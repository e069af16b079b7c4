"""huatuo's logging, and llama.cpp's log routed into it.

Native libraries print to stderr on their own (llama.cpp: ~100 lines per quantization). Here
llama.cpp's log callback is replaced by one that hands each line to the `huatuo.llama_cpp` logger:
quiet by default (only llama.cpp errors are shown), everything with `huatuo --verbose`.

The callback is Python code run from inside C. A Ctrl-C that arrives while llama.cpp is working
raises KeyboardInterrupt *inside the callback*, where ctypes would print and drop it; the callback
therefore catches it and records it (`take_interrupt`), so the caller re-raises it as soon as the
C call returns (long C calls that must stop at once run in a child process instead: quantize.py).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

LOGGER = logging.getLogger("huatuo")
NATIVE = logging.getLogger("huatuo.llama_cpp")
#: ggml.h's ggml_log_level (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5: continues the previous
#: line; llama-cpp-python's own table predates DEBUG) -> logging level. Only llama.cpp's errors are
#: shown by default; its warnings (e.g. context-length notes on every load) need --verbose.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}
_GGML_CONT = 5

_state: dict[str, Any] = {"callback": None, "partial": "", "level": logging.DEBUG, "interrupted": False}


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]  # its stream is chosen at run time
    """The one handler huatuo installs (so `setup` can be called again, e.g. per CliRunner call)."""


def setup(verbose: bool = False) -> None:
    """Log to stderr: warnings and errors by default, everything (native libraries too) with verbose."""
    LOGGER.handlers = [h for h in LOGGER.handlers if not isinstance(h, _Handler)]
    handler = _Handler(sys.stderr)
    handler.setFormatter(logging.Formatter("huatuo: %(name)s: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG if verbose else logging.WARNING)
    LOGGER.propagate = False


def verbose() -> bool:
    return LOGGER.isEnabledFor(logging.DEBUG)


def _on_log(level: int, text: bytes, _user_data: Any) -> None:
    try:
        if level != _GGML_CONT:
            _state["level"] = _LEVELS.get(level, logging.DEBUG)
        _state["partial"] += text.decode("utf-8", "replace")
        *lines, _state["partial"] = _state["partial"].split("\n")
        for line in lines:
            if line.strip():
                NATIVE.log(_state["level"], line)
    except KeyboardInterrupt:  # Ctrl-C landed in this callback: keep it for the caller
        _state["interrupted"] = True
    except BaseException:  # noqa: BLE001 - an exception must never unwind through C frames
        pass


def route_llama_cpp(llama_cpp: Any) -> Any:
    """Send llama.cpp's (and ggml's) log to `huatuo.llama_cpp` (idempotent; the callback is kept
    alive). Returns the callback, for the other native loggers of the package (mtmd)."""
    if _state["callback"] is None:
        _state["callback"] = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_state["callback"], ctypes.c_void_p(0))
    return _state["callback"]


def take_interrupt() -> None:
    """Raise the KeyboardInterrupt a log callback swallowed during the last native call, if any."""
    if _state["interrupted"]:
        _state["interrupted"] = False
        raise KeyboardInterrupt
