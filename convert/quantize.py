"""Output types: which are written directly, which go through llama.cpp's quantizer.

k-quants (and the legacy 4/5-bit types) are made by `llama_model_quantize` from an F16
intermediate written beside the output, exactly as llama.cpp's own `llama-quantize` does; the
intermediate is removed whatever happens.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from pathlib import Path

from huatuo_cli.engine.cpu_backend import llama
from huatuo_cli.errors import HuatuoError
from huatuo_convert.gguf_write import DIRECT_TYPES

#: --quant name -> LLAMA_FTYPE of llama.cpp (llama.h)
LLAMA_QUANTS: dict[str, int] = {
    "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
    "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18,
}
QUANT_TYPES: tuple[str, ...] = DIRECT_TYPES + tuple(LLAMA_QUANTS)
#: The type a quantized output is made from.
INTERMEDIATE = "f16"


def check_quant(quant: str) -> str:
    quant = quant.lower()
    if quant not in QUANT_TYPES:
        raise HuatuoError(f"unknown quantization '{quant}'", hint=f"one of {', '.join(QUANT_TYPES)}")
    return quant


def llama_quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None) -> None:
    """Quantize GGUF `src` into `dst` with llama.cpp (keeps all metadata, sets general.file_type).

    llama.cpp's quantizer runs for minutes on a 7B model inside one C call that cannot be stopped
    from Python (a Ctrl-C lands in its log callback and is lost), so it runs in a child process:
    Ctrl-C (or any failure) here kills the child at once, and the caller's cleanup removes the
    half-written output.
    """
    import multiprocessing

    from huatuo_cli.logs import verbose

    child = multiprocessing.get_context("spawn").Process(
        target=_quantize_child, args=(str(src), str(dst), quant, threads or os.cpu_count() or 1, verbose()),
        name="huatuo-quantize", daemon=True)
    # The child is a new interpreter: a Ctrl-C while it imports its modules would end it with a traceback
    # of its own. Started with SIGINT ignored, it inherits that (CPython then installs no handler), and the
    # parent, which kills it on Ctrl-C, listens again as soon as it runs.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        child.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    try:
        child.join()
    except BaseException:  # Ctrl-C: stop the quantizer now, not when it is done
        child.kill()
        child.join()
        raise
    if child.exitcode != 0:
        raise HuatuoError(f"llama.cpp's quantizer failed to make {quant} (exit {child.exitcode})",
                          hint=f"check free disk space in {dst.parent}; run again as `huatuo --verbose convert ...` for llama.cpp's log")


def _quantize_child(src: str, dst: str, quant: str, threads: int, verbose: bool) -> None:
    """The child's side: SIGINT is the parent's to handle (it kills this process)."""
    import sys

    from huatuo_cli.logs import setup

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup(verbose)
    llama_cpp = llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_QUANTS[quant]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    sys.exit(0 if rc == 0 else 1)
