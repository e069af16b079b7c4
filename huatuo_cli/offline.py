"""Nothing leaves the workstation: telemetry off, no HTTP client imported, and a check that proves it.

Three layers, because the promise must hold for native code too, not only for Python:

* `disable_telemetry()` runs when `huatuo_cli` is imported, before any engine library is. ONNX
  Runtime's official wheels write a device id and queued events to
  `~/.cache/Microsoft/DeveloperTools/.onnxruntime/` as soon as the module is imported, and upload
  them in long runs; its `ORT_DISABLE_TELEMETRY` variable, read at import, stops both (the
  `disable_telemetry_events()` API comes too late for the files, and is called as well).
  Hugging Face libraries (only on the convert server) honour `HF_HUB_DISABLE_TELEMETRY`.
  llama.cpp and pydicom have no telemetry.
* `import_pydicom()`: pydicom imports `requests` when it is installed (to download its test data),
  and urllib3 opens and binds an IPv6 socket at import to probe for IPv6. The runtime never
  downloads, so pydicom is imported with `requests` hidden.
* `no_network()` refuses Python-level sockets in this process, and `watch_command()` builds the
  prefix `huatuo doctor` runs its engine checks under: a child process in an empty network
  namespace (`unshare -n`), traced for every network system call (`strace -f -e trace=network`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

_INET = {socket.AF_INET, socket.AF_INET6}

#: environment variables that switch off the telemetry of the libraries huatuo loads
TELEMETRY_OFF = {
    "ORT_DISABLE_TELEMETRY": "1",     # ONNX Runtime (read when onnxruntime is imported)
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub / transformers (convert server only)
    "DO_NOT_TRACK": "1",              # the cross-tool convention, for anything else that honours it
}

#: where ONNX Runtime's telemetry writes, relative to the cache directory
ORT_TELEMETRY_DIR = Path("Microsoft") / "DeveloperTools" / ".onnxruntime"


def disable_telemetry() -> None:
    """Switch off every telemetry huatuo's libraries have; safe to call more than once."""
    os.environ.update(TELEMETRY_OFF)
    ort = sys.modules.get("onnxruntime")
    disable = getattr(ort, "disable_telemetry_events", None)
    if callable(disable):
        disable()


def import_pydicom() -> None:
    """Import pydicom (and its data manager) with `requests` hidden, so no socket is opened."""
    if "pydicom.data.download" in sys.modules:
        return
    hide = "requests" not in sys.modules
    if hide:
        sys.modules["requests"] = None  # type: ignore[assignment]  # makes `import requests` fail
    try:
        import pydicom.data  # noqa: F401
    finally:
        if hide and sys.modules.get("requests", 0) is None:
            del sys.modules["requests"]


def telemetry_files(cache_dir: Path) -> list[Path]:
    """Files ONNX Runtime's telemetry keeps under `cache_dir` (the XDG cache or ~/.cache)."""
    folder = cache_dir / ORT_TELEMETRY_DIR
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def cache_dir() -> Path:
    """The cache directory native libraries use: $XDG_CACHE_HOME, else ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


class NetworkBlocked(OSError):
    """Raised for any network use inside `no_network()`."""


@contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse DNS lookups and Internet connections in this process; yields the list of attempts.

    Local (AF_UNIX) sockets stay usable: they do not leave the machine.
    """
    attempts: list[str] = []
    saved = {name: getattr(socket, name) for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex",
                                                       "create_connection")}
    saved_methods = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "sendto")}

    def refuse(what: str) -> Callable[..., NoReturn]:
        def blocked(*args: object, **kwargs: object) -> NoReturn:
            attempts.append(what)
            raise NetworkBlocked(f"network use blocked: {what}")
        return blocked

    def guarded(name: str) -> Callable[..., Any]:
        original = saved_methods[name]

        def method(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
            if self.family in _INET:
                attempts.append(f"socket.{name}")
                raise NetworkBlocked(f"network use blocked: socket.{name}")
            return original(self, *args, **kwargs)
        return method

    try:
        for name in saved:
            setattr(socket, name, refuse(name))
        for name in saved_methods:
            setattr(socket.socket, name, guarded(name))
        yield attempts
    finally:
        for name, value in saved.items():
            setattr(socket, name, value)
        for name, value in saved_methods.items():
            setattr(socket.socket, name, value)


@dataclass
class Watch:
    """How a child process is kept off the network and watched: the command prefix and its words."""

    prefix: list[str]
    isolation: str   # e.g. "an empty network namespace (unshare -n)"
    tracing: str     # e.g. "every network system call traced (strace -f -e trace=network)"
    trace_file: Path | None


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command + ["true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def watch_command(trace_file: Path) -> Watch:
    """The strongest isolation and tracing this machine allows (root: `unshare -n`; a user:
    `unshare -rn` where user namespaces are enabled; strace where ptrace is permitted)."""
    prefix: list[str] = []
    isolation = "the normal network (unshare is not available or not permitted here)"
    if shutil.which("unshare"):
        for candidate in (["unshare", "-n"], ["unshare", "-r", "-n"]):
            if _works(candidate):
                prefix = candidate
                isolation = f"an empty network namespace ({' '.join(candidate)})"
                break
    strace = shutil.which("strace")
    if strace and _works([strace, "-f", "-qq", "-e", "trace=network", "-o", os.devnull]):
        return Watch(prefix + [strace, "-f", "-qq", "-e", "trace=network", "-o", os.fspath(trace_file)], isolation,
                     "every network system call traced (strace -f -e trace=network)", trace_file)
    return Watch(prefix, isolation, "Python sockets watched only (strace is not installed or not permitted: "
                 "native code unwatched)", None)


def network_calls(trace_file: Path) -> list[str]:
    """The system calls in an strace log that could reach another machine: any use of an
    AF_INET/AF_INET6 (or packet) socket. AF_UNIX and AF_NETLINK stay on this machine."""
    if not trace_file.is_file():
        return []
    calls = []
    for line in trace_file.read_text(errors="replace").splitlines():
        text = line.split(None, 1)[1] if line[:1].isdigit() else line
        if any(family in text for family in ("AF_INET", "AF_PACKET")):
            calls.append(text[:160])
    return calls
