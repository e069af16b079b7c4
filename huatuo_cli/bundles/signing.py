"""Optional ed25519 signatures on bundles: only bundles IT signed are used, where IT says so.

manifest.json lists the sha256 of every file of a bundle, so a signature over its exact bytes
(`manifest.json.sig`, beside it) covers the whole bundle. Signing happens on the conversion server
(`huatuo convert keygen`, `huatuo convert sign`); workstations hold only public keys.

Enforcement is switched on by trusting at least one key: a `trusted-keys` file (one
`huatuo-ed25519 <base64 key> [comment]` line per key) at `$HUATUO_TRUSTED_KEYS`, else
`<install prefix>/etc/huatuo/trusted-keys` (root-owned, written when huatuo is installed), else the
machine-wide config folder. With a key trusted, a bundle without a valid signature by one of the
keys is refused; with none, signatures are not checked (docs/bundle.md "Signatures").
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path

import platformdirs

from huatuo_cli import APP_NAME
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require

SIG_NAME = "manifest.json.sig"
KEY_TAG = "huatuo-ed25519"
ENV_KEYS = "HUATUO_TRUSTED_KEYS"


def trusted_keys_path() -> Path | None:
    """The trusted-keys file in force, if any (see the module docstring for the order)."""
    if os.environ.get(ENV_KEYS):
        return Path(os.environ[ENV_KEYS])
    for candidate in (Path(sys.prefix) / "etc" / APP_NAME / "trusted-keys",
                      Path(platformdirs.site_config_dir(APP_NAME)) / "trusted-keys"):
        if candidate.is_file():
            return candidate
    return None


def parse_public_key(line: str) -> bytes:
    """The 32 raw key bytes of one `huatuo-ed25519 <base64> [comment]` line."""
    parts = line.split()
    try:
        if len(parts) < 2 or parts[0] != KEY_TAG:
            raise ValueError
        key = base64.b64decode(parts[1], validate=True)
        if len(key) != 32:
            raise ValueError
    except ValueError:
        raise HuatuoError(f"not a {KEY_TAG} public key line: {line[:40]!r}",
                          hint="make keys with `huatuo convert keygen`; copy the .pub line as is") from None
    return key


def trusted_keys() -> list[bytes]:
    path = trusted_keys_path()
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HuatuoError(f"cannot read the trusted keys {path}: {exc.strerror}",
                          hint="fix the file or its permissions; bundles are refused until then") from exc
    keys = [parse_public_key(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise HuatuoError(f"{path} trusts no key", hint=f"add a `{KEY_TAG} ...` line or remove the file")
    return keys


def key_id(key: bytes) -> str:
    """A short, stable name for a public key (shown by `models verify`)."""
    return hashlib.sha256(key).hexdigest()[:16]


def check_signature(root: Path, manifest_bytes: bytes) -> str | None:
    """None when no key is trusted (nothing enforced); else the id of the trusted key whose valid
    signature the bundle carries. Raises HuatuoError for a missing or invalid signature."""
    keys = trusted_keys()
    if not keys:
        return None
    sig_path = Path(root) / SIG_NAME
    if not sig_path.is_file():
        raise HuatuoError(f"bundle {Path(root).name} is not signed, and this workstation only uses signed bundles",
                          hint="ask IT for the signed bundle (`huatuo convert sign` on the conversion server)")
    try:
        signature = base64.b64decode(sig_path.read_text(encoding="ascii").strip(), validate=True)
    except (ValueError, OSError):
        signature = b""
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519")
    exceptions = require("cryptography.exceptions")
    for key in keys:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(key).verify(signature, manifest_bytes)
        except (exceptions.InvalidSignature, ValueError):
            continue
        return key_id(key)
    raise HuatuoError(f"bundle {Path(root).name}: its signature does not match any trusted key "
                      "(the manifest was changed after signing, or another key signed it)",
                      hint="re-copy the signed bundle from the conversion server")
