"""Issue 25: OpenVINO's execution provider for the image encoder, where the `openvino` extra is installed.

`onnxruntime-openvino` ships an `onnxruntime` module of its own: it replaces ONNX Runtime rather than
sitting beside it. `make install` puts it in a folder of its own (`.venv/openvino-ort`); every test
here runs huatuo in a child process with that folder first on its path, as a workstation with the
extra installed instead of `cpu` runs it, on a real bundle (`huatuo convert all`): the real OpenVINO
runtime compiles the real graph. The choice must follow this machine's figures and the cosine gate,
never the runtime's name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from huatuo_cli.engine.providers import CPU, OPENVINO

REPO = Path(__file__).resolve().parents[1]
#: where `make install` puts onnxruntime-openvino (Makefile OPENVINO_ORT)
OPENVINO_ORT = Path(sys.prefix) / "openvino-ort"

#: in the child: record `figures` (JSON; null: measure here), open the bundle's encoder as `ask` does
CHILD = r"""
import json, sys
import onnxruntime
from huatuo_cli.bundles.bundle import load_bundle
from huatuo_cli.engine import vision_choice
from huatuo_cli.engine.quant_probe import ProbeCache, backend_key
from huatuo_cli.doctor import vision_checks
from huatuo_cli.engine.session import BundleImageEncoder

bundle = load_bundle(sys.argv[1])
recorded = json.loads(sys.argv[2])
if recorded is not None:
    ProbeCache(backend_key()).put_vision(vision_choice.figures_key(bundle), recorded)
encoder = BundleImageEncoder(bundle, device="cpu")
print(json.dumps({"onnxruntime": onnxruntime.__file__, "figures": vision_choice.cpu_figures(bundle, run=False),
                  "bound": vision_choice.cosine_bound(bundle), "file": encoder._onnx.path.name,
                  "provider": encoder.provider, "note": encoder.fallback_note,
                  "doctor": [check.detail for check in vision_checks([bundle.root])]}))
"""


@pytest.fixture
def openvino_env(monkeypatch) -> dict[str, str]:
    """The environment of a workstation with the `openvino` extra; the measured rule (no pinned precision)."""
    if not (OPENVINO_ORT / "onnxruntime").is_dir():
        pytest.fail(f"onnxruntime-openvino is not in {OPENVINO_ORT}: `make install` puts it there")
    monkeypatch.delenv("HUATUO_VISION_PRECISION", raising=False)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(OPENVINO_ORT), str(REPO)])}


def open_encoder(env: dict[str, str], bundle: Path, recorded: dict | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(bundle), json.dumps(recorded)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_openvino_is_measured_and_gated_on_this_machine(openvino_env, tiny_bundle):
    """Nothing recorded: every way is measured here, OpenVINO's with its cosine against the exact way."""
    got = open_encoder(openvino_env, tiny_bundle, None)
    assert Path(got["onnxruntime"]).is_relative_to(OPENVINO_ORT)  # the child ran OpenVINO's build
    figures = got["figures"]
    assert {"cpu/fp32", "openvino/fp32"} <= figures.keys(), figures
    assert "seconds" in figures["openvino/fp32"], figures  # it loaded and ran on OpenVINO, not the fallback
    for name, measured in figures.items():
        if name.startswith("openvino/") and "seconds" in measured:
            assert -1.0 <= measured["cosine"] <= 1.0 + 1e-9, (name, measured)
    assert got["bound"] == json.loads((tiny_bundle / "manifest.json").read_text())[
        "fidelity"]["vision"]["files"]["vision-fp16.onnx"]["tolerance"]["min_cosine"]
    from huatuo_cli.engine.vision_choice import choose

    way = choose(figures, got["bound"])
    assert (got["file"], got["provider"]) == (f"vision-{way.precision}.onnx", OPENVINO if way.runtime == "openvino" else CPU)
    [line] = got["doctor"]  # what `huatuo doctor` shows: the way taken, each way's figures, the gate's verdict
    assert line.startswith(f"images encoded by {way.name}: cpu/fp32 ") and "openvino/fp32 " in line, line
    assert f"vs bound {got['bound']}: " in line, line


FAITHFUL, UNFAITHFUL = 0.999999, 0.99


@pytest.mark.parametrize("recorded, file, provider", [
    # OpenVINO faster and within the fp16 file's bound: taken
    ({"cpu/fp32": 1.0, "openvino/fp32": (0.3, FAITHFUL)}, "vision-fp32.onnx", OPENVINO),
    # faster but outside the bound: never taken, however fast
    ({"cpu/fp32": 1.0, "openvino/fp32": (0.1, UNFAITHFUL)}, "vision-fp32.onnx", CPU),
    # within the bound but not GAIN faster: the exact way
    ({"cpu/fp32": 1.0, "openvino/fp32": (0.95, FAITHFUL)}, "vision-fp32.onnx", CPU),
    # the fastest faithful way wins, whichever file and runtime
    ({"cpu/fp32": 1.0, "cpu/int8": 0.6, "openvino/fp32": (0.5, FAITHFUL), "openvino/int8": (0.4, FAITHFUL)},
     "vision-int8.onnx", OPENVINO),
    ({"cpu/fp32": 1.0, "cpu/int8": 0.6, "openvino/fp32": (0.5, FAITHFUL), "openvino/int8": (0.4, UNFAITHFUL)},
     "vision-fp32.onnx", OPENVINO),
    ({"cpu/fp32": 1.0, "cpu/int8": 0.4, "openvino/fp32": (0.5, FAITHFUL)}, "vision-int8.onnx", CPU),
])
def test_the_choice_follows_the_figures_and_the_gate(openvino_env, tiny_bundle, recorded, file, provider):
    figures = {name: {"seconds": f[0], "cosine": f[1]} if isinstance(f, tuple) else {"seconds": f}
               for name, f in recorded.items()}
    got = open_encoder(openvino_env, tiny_bundle, figures)
    assert (got["file"], got["provider"], got["note"]) == (file, provider, None), got


def test_ask_answers_through_openvino_and_says_so(openvino_env, tiny_bundle, tmp_path):
    """Figures that make OpenVINO the way: `ask` encodes with it and its result names the provider."""
    from demo.samples import sample_file

    open_encoder(openvino_env, tiny_bundle, {"cpu/fp32": {"seconds": 1.0},
                                             "openvino/fp32": {"seconds": 0.2, "cosine": FAITHFUL}})
    proc = subprocess.run([sys.executable, "-m", "huatuo_cli", "ask", "--json", "--max-tokens", "4",
                           "--model", str(tiny_bundle), str(sample_file()), "Is there a pleural effusion?"],
                          env=openvino_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["provider"]["vision"] == OPENVINO and result["provider"]["vision_note"] is None
    assert result["answer"] is not None
