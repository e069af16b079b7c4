"""Provider selection: a pure function of what onnxruntime offers and what the user asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from huatuo_cli.engine.providers import (
    CPU,
    CUDA,
    OPENVINO,
    TENSORRT,
    ProviderPlan,
    fallback_note,
    machine_id,
    plan_providers,
    trt_cache_dir,
)
from huatuo_cli.errors import HuatuoError

ALL = [TENSORRT, CUDA, CPU]
BUNDLE = Path("/bundles/huatuo-7b")

# (available, device) -> expected provider order
CASES = [
    (ALL, "auto", [TENSORRT, CUDA, CPU]),
    (ALL, "tensorrt", [TENSORRT, CUDA, CPU]),
    (ALL, "cuda", [CUDA, CPU]),
    (ALL, "cpu", [CPU]),
    ([CUDA, CPU], "auto", [CUDA, CPU]),
    ([CUDA, CPU], "cuda", [CUDA, CPU]),
    ([CUDA, CPU], "cpu", [CPU]),
    ([TENSORRT, CPU], "auto", [TENSORRT, CPU]),
    ([TENSORRT, CPU], "tensorrt", [TENSORRT, CPU]),
    ([CPU], "auto", [CPU]),
    ([CPU], "cpu", [CPU]),
    (["AzureExecutionProvider", CPU], "auto", [CPU]),
]


@pytest.mark.parametrize("available,device,expected", CASES)
def test_order(available, device, expected):
    plan = plan_providers(available, BUNDLE, 336, device, machine="m1")
    assert plan.names == expected
    assert plan.preferred == expected[0]


@pytest.mark.parametrize("available,device", [([CPU], "cuda"), ([CPU], "tensorrt"), ([CUDA, CPU], "tensorrt")])
def test_asking_for_a_missing_gpu_provider_is_a_user_error(available, device):
    with pytest.raises(HuatuoError, match=f"--device {device}.*no (Tensorrt|CUDA)ExecutionProvider") as err:
        plan_providers(available, BUNDLE, 336, device)
    assert "onnxruntime-gpu" in err.value.hint


@pytest.mark.parametrize("available,device,expected", [
    ([OPENVINO, CPU], "auto", [OPENVINO, CPU]),
    ([OPENVINO, CPU], "cpu", [OPENVINO, CPU]),
    ([CPU], "cpu", [CPU]),  # asked for where this onnxruntime lacks it: the CPU provider, as measured
    ([CUDA, OPENVINO, CPU], "auto", [CUDA, CPU]),  # a GPU is not traded for OpenVINO's CPU path
    ([CUDA, OPENVINO, CPU], "cpu", [OPENVINO, CPU]),
])
def test_openvino_goes_before_the_cpu_provider_only_on_the_cpu(available, device, expected):
    """`openvino=True` is `vision_choice`'s verdict for this machine's CPU (tests/test_openvino.py)."""
    plan = plan_providers(available, BUNDLE, 336, device, openvino=True, threads=3)
    assert plan.names == expected
    if OPENVINO in expected:
        assert plan.options(OPENVINO)["device_type"] == "CPU" and plan.options(OPENVINO)["num_of_threads"] == "3"
        assert plan.options(OPENVINO)["cache_dir"].endswith("openvino")
    assert OPENVINO not in plan_providers(available, BUNDLE, 336, device).names  # never without the verdict


def test_unknown_device():
    with pytest.raises(HuatuoError, match="unknown device 'npu'"):
        plan_providers(ALL, BUNDLE, 336, "npu")


@pytest.mark.parametrize("size,max_images", [(336, 6), (56, 2)])
def test_tensorrt_options(size, max_images, tmp_path):
    plan = plan_providers(ALL, tmp_path, size, "auto", machine="abc123", max_images=max_images)
    opts = plan.options(TENSORRT)
    cache = str(tmp_path / "trt-cache" / "abc123")
    assert opts == {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": f"pixel_values:1x3x{size}x{size}",
        "trt_profile_opt_shapes": f"pixel_values:1x3x{size}x{size}",
        "trt_profile_max_shapes": f"pixel_values:{max_images}x3x{size}x{size}",
    }
    assert plan.options(CPU) == {}


@pytest.mark.parametrize("device_id", [0, 1])
def test_cuda_options(device_id):
    plan = plan_providers(ALL, BUNDLE, 336, "cuda", device_id=device_id)
    opts = plan.options(CUDA)
    assert opts["device_id"] == device_id
    assert opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert TENSORRT not in plan.names


def test_cache_is_per_machine_inside_the_bundle(tmp_path):
    mid = machine_id()
    assert mid == machine_id() and len(mid) == 16
    assert trt_cache_dir(tmp_path) == tmp_path / "trt-cache" / mid
    assert trt_cache_dir(tmp_path, "other") != trt_cache_dir(tmp_path)


def test_unwritable_bundle_caches_per_user():
    """A bundle the user cannot write (here: a path that does not exist) caches in the user's cache dir."""
    import platformdirs

    cache = trt_cache_dir(BUNDLE)
    assert cache == Path(platformdirs.user_cache_dir("huatuo")) / "trt-cache" / BUNDLE.name / machine_id()


def test_fallback_is_reported_never_assumed():
    plan = plan_providers(ALL, BUNDLE, 336, "auto", machine="m")
    assert fallback_note(plan, [TENSORRT, CUDA, CPU]) is None
    note = fallback_note(plan, [CPU])
    assert note and "TensorrtExecutionProvider was requested" in note and "running on CPUExecutionProvider" in note
    assert "CUDAExecutionProvider" in fallback_note(plan, [CUDA, CPU])
    assert fallback_note(ProviderPlan([(CPU, {})]), [CPU]) is None


def test_plan_is_accepted_by_onnxruntime(tmp_path):
    """The real onnxruntime takes the plan's list format (CPU build here: only CPU is planned)."""
    from importlib import resources

    import numpy as np
    import onnxruntime as ort

    plan = plan_providers(ort.get_available_providers(), tmp_path, 56, "auto")
    assert plan.names[-1] == CPU
    # a real session made from the plan exactly as the encoder passes it, run once
    model = resources.files("huatuo_cli") / "data" / "identity.onnx"
    session = ort.InferenceSession(str(model), providers=plan.providers)
    assert session.get_providers() == plan.names
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)


def test_engine_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys, huatuo_cli.engine.encoder, huatuo_cli.engine.mtmd_encoder, huatuo_cli.engine.providers, "
            "huatuo_cli.engine.preprocess; bad = {'torch', 'transformers', 'huatuo_convert', 'onnxruntime'} & "
            "set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vision_precision_is_the_one_rule_for_the_fp16_graph(monkeypatch):
    """Bundle roles and folder files are picked by `encoder.vision_precision`: fp16 only where it
    exists and the device is CUDA without TensorRT."""
    import onnxruntime

    from huatuo_cli.engine.encoder import vision_precision

    for available, device, has_fp16, expected in [
        ([CUDA, CPU], "cuda", True, "fp16"), ([CUDA, CPU], "auto", True, "fp16"), (ALL, "auto", True, "fp32"),
        ([CUDA, CPU], "cuda", False, "fp32"), ([CPU], "cpu", True, "fp32"), ([CPU], "auto", True, "fp32"),
    ]:
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda available=available: available)
        assert vision_precision(device, has_fp16=has_fp16) == expected, (available, device, has_fp16)


@pytest.mark.parametrize("device,supported,layers,offload", [
    ("auto", True, -1, True),  # a CUDA build that found a GPU: every layer on it
    ("cpu", True, 0, False),  # --device cpu keeps the LLM on the CPU even where a GPU is there
    ("auto", False, 0, False),  # the CPU build, or no GPU: the CPU answers
])
def test_llm_layers_follow_the_device_and_the_build(tiny_bundle, monkeypatch, device, supported, layers, offload):
    """Which layers go to a GPU is decided by the build's answer (llama_supports_gpu_offload) and
    --device; the CPU build here stands in for both answers (a real GPU: bench/gpu_check.py)."""
    from huatuo_cli.engine import cpu_backend
    from huatuo_cli.engine.session import VisionLanguageModel

    llama_cpp = cpu_backend.llama()
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: supported)
    model = VisionLanguageModel(tiny_bundle, device=device)
    assert model.llm.n_gpu_layers == layers and model.info.llm_gpu_offload is offload


def test_gpu_providers_get_nvidias_libraries_loaded_first(monkeypatch):
    """onnxruntime-gpu's CUDA and TensorRT providers need cuBLAS, cuDNN and the CUDA runtime, which the GPU
    artifact installs as NVIDIA's wheels: ONNX Runtime's own preload_dlls loads them before such a session
    (the installed GPU artifact here failed on libcublasLt.so.13 without it); a CPU session does not ask."""
    import onnxruntime

    from huatuo_cli.engine.encoder import open_session

    calls: list[dict] = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda **kw: calls.append(kw), raising=False)
    model = next((Path(__file__).resolve().parent.parent / "huatuo_cli" / "data").glob("*.onnx"))
    open_session(model, [CPU], None)
    assert calls == []
    open_session(model, [(CUDA, {"device_id": 0}), CPU], None)  # CPU build: ORT warns and falls back
    assert calls == [{"directory": ""}]
