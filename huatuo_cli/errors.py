"""The one user-facing error type.

Anything the user can fix (a bad file, a missing model, an unsupported DICOM, a missing extra)
raises `HuatuoError`. The CLI boundary turns it into a message on stderr and a non-zero exit
code; every other exception is a bug and is allowed to crash with a traceback.
"""

from __future__ import annotations


class HuatuoError(Exception):
    """A problem the user can act on. The message must be PHI-free and say what to do."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  hint: {self.hint}" if self.hint else text


def is_data_failure(exc: BaseException) -> bool:
    """Whether `exc` is a failure caused by the data being processed rather than a request to stop.

    Native decoders written in Rust (pylibjpeg-rle) raise pyo3's `PanicException` on bad data; it
    derives from BaseException, so `except Exception` misses it, yet it is that file's failure and
    must never end a batch. Ctrl-C, exit and out-of-memory are not data failures.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)):
        return False
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"
