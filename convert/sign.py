"""`huatuo convert keygen | sign`: IT's ed25519 key, and signatures on verified bundles.

The private key stays on the conversion server (owner-only PEM); workstations get the one-line
public key (`huatuo_cli.bundles.signing` reads it). A bundle is signed only after every file hashed right,
so a signature always vouches for a verified bundle.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from huatuo_cli.bundles.bundle import BUNDLE_FILE_MODE, MANIFEST_NAME, read_manifest, verify_files
from huatuo_cli.bundles.signing import KEY_TAG, SIG_NAME, key_id
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_cli.privacy import write_private

PRIVATE_NAME = "huatuo-signing.key"
PUBLIC_NAME = "huatuo-signing.pub"


def keygen(folder: Path, comment: str = "") -> tuple[Path, Path, str]:
    """A new key pair in `folder` -> (private key path, public key path, key id). Never overwrites."""
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519")
    serialization = require("cryptography.hazmat.primitives.serialization")
    folder = Path(folder)
    private, public = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    if private.exists() or public.exists():
        raise HuatuoError(f"{folder} already holds a signing key", hint="choose another folder; keys are never replaced")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    write_private(private, pem)
    public.write_text(f"{KEY_TAG} {base64.b64encode(raw).decode('ascii')} {comment}".rstrip() + "\n")
    return private, public, key_id(raw)


def sign_bundle(root: Path, private_key: Path) -> str:
    """Check every file of the bundle, then sign its manifest; returns the signing key's id."""
    serialization = require("cryptography.hazmat.primitives.serialization")
    root = Path(root)
    manifest, _ = read_manifest(root)
    problems = verify_files(root, manifest)
    if problems:
        raise HuatuoError(f"bundle {root.name} failed verification, not signed: " + "; ".join(problems))
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise HuatuoError(f"{private_key} is not a readable signing key ({exc.__class__.__name__})",
                          hint="make one with `huatuo convert keygen DIR`") from exc
    signature = key.sign((root / MANIFEST_NAME).read_bytes())
    path = write_private(root / SIG_NAME, base64.b64encode(signature).decode("ascii") + "\n")
    os.chmod(path, BUNDLE_FILE_MODE)  # a bundle file like the others (docs/bundle.md)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id(raw)
