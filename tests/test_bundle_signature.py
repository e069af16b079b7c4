"""Issue 11 item 6, optional part: bundles signed with IT's ed25519 key (docs/bundle.md "Signatures").

Real keys (cryptography), real CLI: keygen and sign on the "server", a trusted-keys file on the
"workstation". With a key trusted, an unsigned, re-signed-by-another-key or edited bundle is refused.
"""

from __future__ import annotations

import json

import cryptography  # noqa: E402,F401  # the convert extra installs it: a missing one fails loudly, never skips
import pytest
from click.testing import CliRunner

from huatuo_cli.bundles.bundle import MANIFEST_NAME, load_bundle
from huatuo_cli.bundles.signing import ENV_KEYS, SIG_NAME
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from tests.bundle_helpers import make_bundle


def invoke(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def it_key(tmp_path, monkeypatch):
    invoke("convert", "keygen", str(tmp_path / "keys"), "--comment", "radiology IT")
    trusted = tmp_path / "trusted-keys"
    trusted.write_text("# IT's key\n" + (tmp_path / "keys" / "huatuo-signing.pub").read_text())
    monkeypatch.setenv(ENV_KEYS, str(trusted))
    return tmp_path / "keys" / "huatuo-signing.key"


def test_signed_bundle_is_used_and_reported(tmp_path, it_key):
    root = make_bundle(tmp_path / "b")
    assert (it_key.stat().st_mode & 0o077) == 0  # the private key is owner-only
    invoke("convert", "sign", str(root), "--key", str(it_key))
    assert load_bundle(root).signed_by
    assert "signed by trusted key" in invoke("models", "verify", str(root))


def refused(root, match):
    with pytest.raises(HuatuoError, match=match):
        load_bundle(root)
    res = CliRunner().invoke(cli, ["models", "verify", str(root)])
    assert res.exit_code == 1 and "Traceback" not in res.output and match.split(" ")[0] in res.output


def test_unsigned_bundle_is_refused_where_a_key_is_trusted(tmp_path, it_key):
    refused(make_bundle(tmp_path / "b"), "is not signed")


def test_edited_manifest_breaks_the_signature(tmp_path, it_key):
    root = make_bundle(tmp_path / "b")
    invoke("convert", "sign", str(root), "--key", str(it_key))
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["fidelity"] = {"llm": {"top1": 1.0, "note": "looks great"}}  # a claim nothing else checks
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    refused(root, "signature does not match any trusted key")


def test_another_key_is_not_trusted(tmp_path, it_key):
    invoke("convert", "keygen", str(tmp_path / "other"))
    root = make_bundle(tmp_path / "b")
    invoke("convert", "sign", str(root), "--key", str(tmp_path / "other" / "huatuo-signing.key"))
    refused(root, "signature does not match any trusted key")


def test_without_a_trusted_key_signatures_are_not_enforced(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_KEYS, raising=False)
    root = make_bundle(tmp_path / "b")
    assert not (root / SIG_NAME).exists() and load_bundle(root).signed_by is None
    assert "signatures not enforced" in invoke("models", "verify", str(root))
