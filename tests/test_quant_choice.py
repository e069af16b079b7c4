"""Issue 25: several quantizations of one model, the fastest on this CPU chosen by measurement.

Two real tiny bundles of one checkpoint (`convert all --quant q8_0 --quant q4_k_m`, one run). The
speed probe's cache is written with recorded figures that make either one faster: the choice must
follow the figures (not the CPU, not the quantization's name); `NAME:TAG` and a path override it;
figures of another build or another bundle file are not trusted but measured again.
"""

from __future__ import annotations

import json
from pathlib import Path

import platformdirs
import pytest
from click.testing import CliRunner

from huatuo_cli import APP_NAME
from huatuo_cli.bundles.bundle import load_bundle, read_manifest
from huatuo_cli.cli import cli
from huatuo_cli.engine import quant_probe
from huatuo_cli.errors import HuatuoError

NAME = "tiny"
QUANTS = ("q8_0", "q4_k_m")


@pytest.fixture(autouse=True)
def measured_vision(isolated_user_dirs, monkeypatch):  # after conftest pins fp32
    """This module tests the measured rule: no pinned vision precision (conftest pins fp32)."""
    monkeypatch.delenv("HUATUO_VISION_PRECISION", raising=False)


@pytest.fixture(scope="session")
def two_quants(make_checkpoint, tmp_path_factory) -> dict:
    """`huatuo convert all SRC OUT/tiny --quant q8_0 --quant q4_k_m`, counting the shared work."""
    import huatuo_convert.onnx_export as onnx_export
    import huatuo_convert.reference as reference

    calls = {"reference": 0, "vision": 0}
    load, export = reference.LlavaReference.load.__func__, onnx_export.export_vision

    def counted_load(cls, *args, **kwargs):
        calls["reference"] += 1
        return load(cls, *args, **kwargs)

    def counted_export(*args, **kwargs):
        calls["vision"] += 1
        return export(*args, **kwargs)

    folder = tmp_path_factory.mktemp("quants")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reference.LlavaReference, "load", classmethod(counted_load))
        mp.setattr(onnx_export, "export_vision", counted_export)
        res = CliRunner().invoke(cli, ["convert", "all", str(make_checkpoint()), str(folder / NAME),
                                       "--quant", QUANTS[0], "--quant", QUANTS[1], "--no-mmproj"])
    assert res.exit_code == 0, res.output
    return {"paths": {q: folder / f"{NAME}-{q}" for q in QUANTS}, "calls": calls, "output": res.output}


@pytest.fixture
def installed(two_quants) -> dict[str, Path]:
    """Both bundles in this test's models folder (links: the isolated user dirs are per test)."""
    models = Path(platformdirs.user_data_dir(APP_NAME)) / "models"
    models.mkdir(parents=True)
    out = {}
    for quant, path in two_quants["paths"].items():
        (models / path.name).symlink_to(path, target_is_directory=True)
        out[quant] = models / path.name
    return out


def _record(figures: dict[str, tuple[float, float]], paths: dict[str, Path], key: str | None = None) -> None:
    """Write recorded probe figures (prefill, decode tok/s) for the bundles into the probe cache."""
    bundles = {}
    for quant, (prefill, decode) in figures.items():
        manifest, _ = read_manifest(paths[quant])
        bundles[manifest.file("llm").sha256] = {"prefill_tps": prefill, "decode_tps": decode, "variant": "recorded"}
    path = quant_probe.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key or quant_probe.backend_key(), "bundles": bundles}))


def test_one_run_writes_each_quantization_sharing_the_reference_work(two_quants):
    assert two_quants["calls"] == {"reference": 1, "vision": 1}, two_quants["calls"]
    manifests = {q: load_bundle(p, use_cache=False).manifest for q, p in two_quants["paths"].items()}  # each verified
    assert {q: m.quantization for q, m in manifests.items()} == {q: q for q in QUANTS}
    assert len({m.source["config_sha256"] for m in manifests.values()}) == 1
    assert len({m.file("vision-fp32").sha256 for m in manifests.values()}) == 1  # one export, in both
    assert len({m.file("llm").sha256 for m in manifests.values()}) == 2
    for manifest in manifests.values():  # each bundle its own end-to-end check
        assert manifest.fidelity["end_to_end"]["tokens_compared"] > 0 and manifest.fidelity["llm"]["logits"]
    assert two_quants["output"].count("wrote bundle") == 2


def test_the_choice_follows_the_probe(installed):
    for fast, slow in (("q8_0", "q4_k_m"), ("q4_k_m", "q8_0")):
        _record({fast: (300.0, 20.0), slow: (100.0, 15.0)}, installed)
        assert quant_probe.find_model(NAME) == installed[fast]
        assert quant_probe.find_model(None) == installed[fast]  # only this model installed: the same choice
    # within 5 %: the larger file (more bits per weight, the more faithful) wins whichever is marginally faster
    _record({"q8_0": (100.0, 15.0), "q4_k_m": (102.0, 15.2)}, installed)
    assert quant_probe.find_model(NAME) == installed["q8_0"]


def test_a_tag_or_a_path_overrides_the_probe(installed):
    _record({"q8_0": (300.0, 20.0), "q4_k_m": (100.0, 15.0)}, installed)
    assert quant_probe.find_model(f"{NAME}:q4_k_m") == installed["q4_k_m"]
    assert quant_probe.find_model(f"{NAME}:Q4_K_M") == installed["q4_k_m"]
    assert quant_probe.find_model(str(installed["q4_k_m"])) == installed["q4_k_m"]
    with pytest.raises(HuatuoError, match="no tag q5_k_m") as err:
        quant_probe.find_model(f"{NAME}:q5_k_m")
    assert "tiny:q4_k_m" in err.value.hint and "tiny:q8_0" in err.value.hint


def test_ask_with_a_model_name_answers_with_the_fastest(installed):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm", download=False)
    _record({"q4_k_m": (300.0, 20.0), "q8_0": (100.0, 15.0)}, installed)
    runner = CliRunner()
    for model, want in ((NAME, "q4_k_m"), (f"{NAME}:q8_0", "q8_0")):
        res = runner.invoke(cli, ["ask", "--model", model, "--json", "--max-tokens", "2", ct, "Describe."])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["model"]["quantization"] == want


def test_models_list_shows_the_figures_and_the_choice(installed):
    _record({"q8_0": (300.0, 20.0), "q4_k_m": (100.0, 15.0)}, installed)
    res = CliRunner().invoke(cli, ["models", "list"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if "tiny-" in line}
    assert "prefill 300 tok/s" in rows["tiny-q8_0"] and "fastest here" in rows["tiny-q8_0"]
    assert "prefill 100 tok/s" in rows["tiny-q4_k_m"] and "fastest here" not in rows["tiny-q4_k_m"]
    assert "tiny:q8_0" in rows["tiny-q8_0"]


@pytest.mark.slow
def test_stale_figures_are_measured_again(installed):
    """Figures recorded under another build's key, or for another LLM file, are not used: the probe
    runs (in a child, on the real files) and its figures replace them."""
    _record({"q8_0": (1e6, 1e6), "q4_k_m": (1.0, 1.0)}, installed, key="another build")
    chosen = quant_probe.find_model(NAME)
    cache = json.loads(quant_probe.cache_path().read_text())
    assert cache["key"] == quant_probe.backend_key()
    figures = list(cache["bundles"].values())
    assert len(figures) == 2 and all(f["prefill_tps"] not in (1e6, 1.0) and f["variant"] != "recorded" for f in figures)
    measured = quant_probe.measure(list(installed.values()), run=False)
    assert chosen == quant_probe.ranked(measured)[0].path
    # this build's key, but for files of other bundles: measured again as well
    stale = {"0" * 64: {"prefill_tps": 1e6, "decode_tps": 1e6}}
    quant_probe.cache_path().write_text(json.dumps({"key": quant_probe.backend_key(), "bundles": stale}))
    quant_probe.find_model(NAME)
    assert len(json.loads(quant_probe.cache_path().read_text())["bundles"]) == 3


def test_doctor_measures_and_names_the_choice(installed):
    from huatuo_cli.doctor import speed_checks

    _record({"q8_0": (100.0, 15.0), "q4_k_m": (300.0, 20.0)}, installed)
    checks = {c.name: c for c in speed_checks(list(installed.values()))}
    assert "prefill 300 tok/s" in checks["speed tiny-q4_k_m"].detail
    assert "uses q4_k_m" in checks[f"model {NAME}"].detail


# --- the image encoder on the CPU it has (int8 vision file) ----------------------------------------

def test_int8_vision_file_is_gated_and_listed(two_quants):
    manifest = load_bundle(two_quants["paths"]["q8_0"]).manifest
    report = manifest.fidelity["vision"]["files"]["vision-int8.onnx"]
    assert manifest.file("vision-int8") is not None and report["passed"]
    assert report["tolerance"]["min_cosine"] == manifest.fidelity["vision"]["files"]["vision-fp16.onnx"]["tolerance"]["min_cosine"]


def test_an_int8_file_out_of_tolerance_is_left_out(make_checkpoint, tmp_path):
    """A bound no int8 file can meet: the export succeeds without it, its figures kept as rejected."""
    from huatuo_convert.onnx_export import export_vision
    from huatuo_convert.onnx_validate import Tolerance

    export = export_vision(make_checkpoint(), tmp_path / "v", tolerances={"int8": Tolerance(min_cosine=0.9999999)})
    assert "vision-int8.onnx" not in export.files and not (tmp_path / "v" / "vision-int8.onnx").exists()
    assert export.fidelity["rejected"]["vision-int8.onnx"]["passed"] is False
    assert "vision-fp32.onnx" in export.files and "vision-fp16.onnx" in export.files


def _record_vision(bundle_path: Path, int8_s: float, fp32_s: float) -> None:
    """Figures of this machine as `vision_choice` records them: ONNX Runtime's CPU provider on each file."""
    from huatuo_cli.engine import vision_choice

    bundle = load_bundle(bundle_path)
    quant_probe.ProbeCache(quant_probe.backend_key()).put_vision(
        vision_choice.figures_key(bundle), {"cpu/fp32": {"seconds": fp32_s}, "cpu/int8": {"seconds": int8_s}})


def test_the_cpu_encoder_follows_the_measurement(two_quants):
    from huatuo_cli.engine.session import BundleImageEncoder

    bundle = load_bundle(two_quants["paths"]["q8_0"])
    for int8_s, fp32_s, want in ((0.5, 1.0, "vision-int8.onnx"), (1.0, 1.0, "vision-fp32.onnx"),
                                 (2.0, 1.0, "vision-fp32.onnx")):
        _record_vision(bundle.root, int8_s, fp32_s)
        encoder = BundleImageEncoder(bundle, device="cpu")
        assert encoder._onnx.path.name == want, (int8_s, fp32_s)
    quant_probe.cache_path().unlink()  # nothing recorded: measured now, and remembered
    BundleImageEncoder(bundle, device="cpu")
    assert json.loads(quant_probe.cache_path().read_text())["vision"]


def test_a_pinned_vision_precision_is_taken_as_given_and_checked(two_quants, monkeypatch):
    """HUATUO_VISION_PRECISION pins the graph (IT policy; tests against the fp32 reference)."""
    from huatuo_cli.engine.session import BundleImageEncoder

    bundle = load_bundle(two_quants["paths"]["q8_0"])
    _record_vision(bundle.root, 0.5, 1.0)  # int8 measured faster: the rule alone would take it
    monkeypatch.setenv("HUATUO_VISION_PRECISION", "fp32")
    assert BundleImageEncoder(bundle, device="cpu")._onnx.path.name == "vision-fp32.onnx"
    monkeypatch.setenv("HUATUO_VISION_PRECISION", "int4")
    with pytest.raises(HuatuoError, match="not a vision precision"):
        BundleImageEncoder(bundle, device="cpu")


def test_doctor_shows_the_vision_figures_and_the_way_or_the_pin(two_quants, monkeypatch):
    from huatuo_cli.doctor import vision_checks

    path = two_quants["paths"]["q8_0"]
    _record_vision(path, 0.5, 1.0)
    [check] = vision_checks([path])
    assert check.detail == "images encoded by cpu/int8: cpu/fp32 1.00 s; cpu/int8 0.50 s", check.detail
    monkeypatch.setenv("HUATUO_VISION_PRECISION", "fp32")
    [check] = vision_checks([path])
    assert check.detail == "images encoded by cpu/fp32: pinned by HUATUO_VISION_PRECISION", check.detail
