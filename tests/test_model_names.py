"""Issue 11 item 11: one name per meaning.

`model_sha256` is the sha256 of a bundle's manifest.json (which verified model answered): the same
key and value in `models info --json`, `ask --json` results, batch results and the audit log.
`bundle_name` is the name given at conversion; `bundle` the folder it is installed in. Old results
(huatuo.result/1, `model.model_id`) and old manifests (version 1, `model_id`) are still read.
"""

from __future__ import annotations

import hashlib
import io
import json

from click.testing import CliRunner
from pydicom.data import get_testdata_file

from huatuo_cli import audit
from huatuo_cli.answering.inputs import jobs_from_folder
from huatuo_cli.batch.progress import PlainProgress
from huatuo_cli.batch.results import RESULTS_NAME, BatchState, read_jsonl
from huatuo_cli.batch.runner import run_batch
from huatuo_cli.bundles.bundle import MANIFEST_NAME, load_bundle
from huatuo_cli.cli import cli
from tests.batch_helpers import describe, sample_folder
from tests.bundle_helpers import make_bundle


def test_one_name_per_meaning_in_info_results_and_audit(tiny_bundle):
    runner = CliRunner()
    info = json.loads(runner.invoke(cli, ["models", "info", str(tiny_bundle), "--json"]).output)
    digest = hashlib.sha256((tiny_bundle / MANIFEST_NAME).read_bytes()).hexdigest()
    assert info["model_sha256"] == digest and "model_id" not in info
    assert info["bundle"] == tiny_bundle.name and info["bundle_name"] == tiny_bundle.name
    res = runner.invoke(cli, ["ask", "--json", "--max-tokens", "4", "--model", str(tiny_bundle),
                              get_testdata_file("CT_small.dcm"), "Any fracture?"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["schema"] == "huatuo.result/2"
    assert record["model"]["model_sha256"] == digest and "model_id" not in record["model"]
    entry = audit.read_entries()[-1]
    assert entry["schema"] == "huatuo.audit/2" and entry["model_sha256"] == digest and "model_id" not in entry


def test_results_of_the_old_schema_resume(tmp_path):
    root = sample_folder(tmp_path / "in", truncated=False, text_file=False)
    out = tmp_path / "out"
    first = run_batch(jobs_from_folder(root), ["q1"], out, lambda: (describe, {"model_sha256": "m" * 64}),
                      progress=PlainProgress(io.StringIO()), root=root)
    assert first.answered == 3
    old = [{**r, "schema": "huatuo.result/1", "model": {"model_id": r["model"].pop("model_sha256"), **r["model"]}}
           for r in read_jsonl(out / RESULTS_NAME)]
    (out / RESULTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in old))
    state = BatchState.open(out)
    assert all(r["model"]["model_sha256"] == "m" * 64 and "model_id" not in r["model"] for r in state.results)
    again = run_batch(jobs_from_folder(root), ["q1", "q2"], out, lambda: (describe, {"model_sha256": "m" * 64}),
                      progress=PlainProgress(io.StringIO()), root=root)
    assert (again.skipped, again.answered, again.exit_code) == (3, 3, 0)


def test_version_1_manifest_still_loads(tmp_path):
    root = make_bundle(tmp_path / "b")
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["version"], data["model_id"] = 1, data.pop("bundle_name")
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    assert load_bundle(root).manifest.bundle_name == "test"
