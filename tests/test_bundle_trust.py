"""Issue 11 item 6: the manifest is checked, not trusted (docs/bundle.md "Manifest rules").

Paths stay inside the bundle, a manifest lists files and the required roles, and the fields the
runtime reports (quantization, architecture) must agree with the LLM file the hashes cover.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from huatuo_cli.bundles.bundle import MANIFEST_NAME, load_bundle, sha256_file
from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from tests.bundle_helpers import make_bundle


def edit_manifest(root: Path, change) -> None:
    data = json.loads((root / MANIFEST_NAME).read_text())
    change(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def refused(root: Path, match: str, commands: tuple[str, ...] = ("verify", "info")) -> None:
    """load_bundle and the `models` commands refuse, with a message and no traceback."""
    with pytest.raises(HuatuoError, match=match):
        load_bundle(root)
    for command in commands:
        res = CliRunner().invoke(cli, ["models", command, str(root)])
        assert res.exit_code == 1, (command, res.output)
        assert "Traceback" not in res.output and re.search(match, " ".join(res.output.split())), res.output


def _point_llm_at(root: Path, path: str) -> None:
    def change(data):
        entry = next(f for f in data["files"] if f["role"] == "llm")
        target = (root / path) if not os.path.isabs(path) else Path(path)
        entry.update(path=path, size=target.stat().st_size, sha256=sha256_file(target))
    edit_manifest(root, change)


@pytest.mark.parametrize("outside", ["../elsewhere.gguf", "ABSOLUTE"])
def test_paths_outside_the_bundle_are_refused(tmp_path, outside):
    root = make_bundle(tmp_path / "b")
    elsewhere = tmp_path / "elsewhere.gguf"
    elsewhere.write_bytes((root / "llm.gguf").read_bytes())  # a hash-correct file outside
    _point_llm_at(root, str(elsewhere) if outside == "ABSOLUTE" else outside)
    refused(root, "not a plain relative path inside the bundle")


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    elsewhere = tmp_path / "elsewhere.gguf"
    os.replace(root / "llm.gguf", elsewhere)
    (root / "llm.gguf").symlink_to(elsewhere)
    refused(root, "leads outside the bundle folder", commands=("verify",))  # info does not hash files


def test_empty_file_list_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    edit_manifest(root, lambda data: data.update(files=[]))
    refused(root, "lists no files")


def test_missing_preprocessor_entry_is_refused(tmp_path):
    """Without the entry an edited preprocessor_config.json would be read unverified."""
    root = make_bundle(tmp_path / "b")
    edit_manifest(root, lambda data: data.update(files=[f for f in data["files"] if f["role"] != "preprocessor"]))
    (root / "vision" / "preprocessor_config.json").write_text('{"crop_size": 224}')
    refused(root, "required file role.s. missing: preprocessor")


@pytest.mark.parametrize("field,value,match", [
    ("quantization", "q8_0", "manifest quantization 'q8_0' but the LLM file says 'f16'"),
    ("architecture", "llava-llama", "manifest architecture 'llava-llama' but the LLM file says 'llava-qwen2'"),
    ("llm", {"family": "qwen2", "prompt_markers": "tokens"},
     "manifest llm.prompt_markers 'tokens' but the LLM file says 'text'"),
])
def test_edited_fields_are_checked_against_the_llm_file(tmp_path, field, value, match):
    from huatuo_cli.bundles.locate import models_dirs

    root = make_bundle(models_dirs()[0] / "b")
    edit_manifest(root, lambda data: data.update({field: value}))
    refused(root, match)
    listed = CliRunner().invoke(cli, ["models", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and str(value) not in listed.output and "run models verify" in listed.output
