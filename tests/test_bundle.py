"""Bundles: manifests round-trip, and any changed byte makes loading refuse the bundle."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from huatuo_cli.bundles.bundle import Manifest, load_bundle
from huatuo_cli.bundles.locate import ENV_MODEL, config_file, find_bundle, models_dirs
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from tests.bundle_helpers import ROLES, make_bundle


def test_manifest_round_trip(tmp_path):
    root = make_bundle(tmp_path / "b")
    bundle = load_bundle(root)
    assert bundle.manifest.file("llm").size == (root / "llm.gguf").stat().st_size
    assert Manifest.from_json(bundle.manifest.to_json()) == bundle.manifest
    assert len(bundle.manifest_sha256) == 64


@pytest.mark.parametrize("name", ["llm.gguf", "vision/vision-fp32.onnx"])
@pytest.mark.parametrize("offset", [0, 1000])
def test_one_flipped_byte_is_refused_naming_the_file(tmp_path, name, offset):
    root = make_bundle(tmp_path / "b")
    data = bytearray((root / name).read_bytes())
    data[offset] ^= 0x01
    (root / name).write_bytes(bytes(data))
    with pytest.raises(HuatuoError, match=f"{name}: sha256 differs"):
        load_bundle(root)
    res = CliRunner().invoke(cli, ["models", "verify", str(root)])
    assert res.exit_code == 1
    assert f"FAIL {name}" in res.output and "Traceback" not in res.output


def test_missing_and_truncated_files_are_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "llm.gguf").write_bytes(b"short")
    (root / "vision" / "vision-fp32.onnx").unlink()
    with pytest.raises(HuatuoError) as err:
        load_bundle(root)
    assert "llm.gguf: size 5 differs" in str(err.value) and "vision-fp32.onnx: missing" in str(err.value)


def test_models_verify_and_info_on_intact_bundle(tmp_path):
    root = make_bundle(tmp_path / "b")
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "verify", str(root)])
    assert res.exit_code == 0, res.output
    assert "3 files match" in res.output
    res = runner.invoke(cli, ["models", "info", str(root), "--json"])
    assert json.loads(res.output)["architecture"] == "llava-qwen2"


def test_bundle_lookup_order(tmp_path, monkeypatch):
    a, b, c = make_bundle(tmp_path / "a"), make_bundle(tmp_path / "b"), make_bundle(tmp_path / "c")
    with pytest.raises(HuatuoError, match="no model bundle found"):
        find_bundle()
    installed = make_bundle(models_dirs()[0] / "only")
    assert find_bundle() == installed
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(f'model = "{c}"\n')
    assert find_bundle() == c
    monkeypatch.setenv(ENV_MODEL, str(b))
    assert find_bundle() == b
    assert find_bundle(a) == a
    with pytest.raises(HuatuoError, match="not a model bundle"):
        find_bundle(tmp_path)


def test_not_a_bundle_is_a_clear_cli_error(tmp_path):
    res = CliRunner().invoke(cli, ["models", "verify", str(tmp_path)])
    assert res.exit_code == 1
    assert "not a model bundle" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_cached_verification_still_catches_a_flipped_byte_with_mtime_restored(tmp_path):
    """A file unchanged since it hashed right is not re-read; any write to it is noticed anyway."""
    import os

    from huatuo_cli.bundles.bundle import VerifiedCache

    root = make_bundle(tmp_path / "b")
    load_bundle(root)  # full hash, remembered
    cache = VerifiedCache()
    entry = load_bundle(root, verify=False).manifest.file("llm")
    assert cache.holds(root / entry.path, entry.sha256)
    path = root / "llm.gguf"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # put the modification time back
    assert not VerifiedCache().holds(path, entry.sha256)
    with pytest.raises(HuatuoError, match="llm.gguf: sha256 differs"):
        load_bundle(root)


def test_cache_is_not_trusted_by_models_verify(tmp_path, monkeypatch):
    from huatuo_cli.bundles import bundle as bundle_mod

    root = make_bundle(tmp_path / "b")
    load_bundle(root)
    hashed = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    load_bundle(root)
    assert hashed == []  # answered from the cache
    res = CliRunner().invoke(cli, ["models", "verify", str(root)])
    assert res.exit_code == 0 and len(hashed) == len(ROLES)  # models verify re-reads every file
