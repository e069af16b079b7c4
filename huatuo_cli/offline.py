"""Prove the runtime works with no network: run code with every Internet socket refused.

`huatuo doctor` runs its engine checks inside `no_network()` and reports every attempt; a
workstation that is air-gapped must not depend on a library quietly phoning home (a hub lookup,
telemetry) — that would be a hang or a leak on site, so we surface it as a failed check instead.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

_INET = {socket.AF_INET, socket.AF_INET6}


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
