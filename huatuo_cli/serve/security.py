"""Where the server may listen, and its API key.

Loopback by default; any other address only with an API key. The key comes from the environment
(`HUATUO_API_KEY`) or a file (`--api-key-file`), never from the command line, where every user of
the machine can read it in the process list.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from huatuo_cli.errors import HuatuoError

KEY_ENV = "HUATUO_API_KEY"
MIN_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: whatever it resolves to, not trusted as loopback


def read_api_key(key_file: Path | None) -> tuple[str | None, list[str]]:
    """(the key or None, warnings). Refuses an empty or short key and a key in both places."""
    warnings: list[str] = []
    from_env = os.environ.get(KEY_ENV)
    if key_file is not None and from_env:
        raise HuatuoError(f"an API key is given both in {KEY_ENV} and by --api-key-file", hint="give one")
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            text = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HuatuoError(f"cannot read the API key file ({type(exc).__name__})",
                              hint="--api-key-file names a UTF-8 text file holding the key") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append("the API key file is readable by other users (chmod 600 it)")
        lines = text.strip().splitlines()
        key: str | None = lines[0].strip() if lines else ""
    else:
        key = from_env.strip() if from_env is not None else None
    if key is not None and len(key) < MIN_KEY_CHARS:
        raise HuatuoError(f"the API key is too short ({len(key)} characters; at least {MIN_KEY_CHARS})",
                          hint="make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key, warnings


def check_bind(host: str, api_key: str | None, *, tls: bool) -> list[str]:
    """Refuse a non-loopback address without a key; warnings for what is allowed but weak."""
    if is_loopback(host):
        return []
    if api_key is None:
        raise HuatuoError(f"--host {host} is not a loopback address: other machines could reach the model, so "
                          "an API key is required",
                          hint=f"set {KEY_ENV} or give --api-key-file (and --tls-cert/--tls-key), or listen on 127.0.0.1")
    return [] if tls else ["listening beyond this machine without TLS: the key and the images cross the network "
                           "in clear text (give --tls-cert and --tls-key)"]
