"""`huatuo doctor`: can this workstation run huatuo, and how fast will it be?

Everything an IT person asks before a radiologist tries it: CPU features and memory, GPUs, the ONNX
Runtime providers that actually load (not just the ones listed: a CUDA provider without its
libraries is listed and then silently falls back to CPU), llama.cpp's build (CUDA offload or not),
every installed bundle verified against its manifest, and proof that the runtime needs no network.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import install_hint, require
from huatuo_cli.offline import ORT_TELEMETRY_DIR, no_network

SCHEMA = "huatuo.doctor/1"
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")
#: Variables that make some libraries skip network lookups; the runtime must not need them.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class Check:
    name: str
    status: str   # ok | warn | fail | info
    detail: str
    data: dict[str, Any] | None = None


def cpu_check() -> Check:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key == "model name" and value.strip():
                model = value.strip()
    except OSError:
        pass
    present = [f for f in CPU_FLAGS if f in flags]
    status = "ok" if ("avx2" in flags or "asimd" in flags or not flags) else "warn"
    detail = f"{model}, {os.cpu_count()} logical cores, " + (" ".join(present) or "feature flags unknown")
    if status == "warn":
        detail += " (no AVX2: llama.cpp will be slow)"
    return Check("cpu", status, detail, {"model": model, "cores": os.cpu_count(), "flags": present})


def memory_check() -> Check:
    total = available = None
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, available = vm.total, vm.available
    except ImportError:
        try:
            info = {k: int(v.split()[0]) * 1024 for k, _, v in
                    (line.partition(":") for line in Path("/proc/meminfo").read_text().splitlines()) if v}
            total, available = info.get("MemTotal"), info.get("MemAvailable")
        except (OSError, ValueError):
            pass
    if total is None:
        return Check("memory", "info", "unknown")
    gib = 1 << 30
    status = "ok" if total >= 8 * gib else "warn"
    detail = f"{total / gib:.1f} GiB total, {available / gib:.1f} GiB available" if available else f"{total / gib:.1f} GiB"
    if status == "warn":
        detail += " (the 7B model in Q4 needs about 6 GiB)"
    return Check("memory", status, detail, {"total": total, "available": available})


def gpu_check() -> Check:
    tool = shutil.which("nvidia-smi")
    if not tool:
        return Check("gpu", "info", "none found (no nvidia-smi): CPU only", {"gpus": []})
    try:
        out = subprocess.run([tool, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("gpu", "warn", f"nvidia-smi failed: {exc}")
    gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0:
        return Check("gpu", "warn", f"nvidia-smi exit {out.returncode}: {out.stderr.strip()[:200]}")
    return Check("gpu", "ok" if gpus else "info", "; ".join(gpus) or "none", {"gpus": gpus})


def onnx_providers_check() -> list[Check]:
    """One session per listed provider on a 4-float identity model; a provider counts only if the
    session really runs on it and returns its input."""
    import numpy as np

    try:
        ort = require("onnxruntime")  # a missing package or system library: one line saying which
    except HuatuoError as exc:
        return [Check("onnxruntime", "fail", str(exc).replace("\n  hint:", ";"))]
    model = resources.files("huatuo_cli").joinpath("data/identity.onnx").read_bytes()
    x = np.arange(4, dtype=np.float32)[None]
    checks = []
    for provider in ort.get_available_providers():
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(model, options, providers=[provider])
            used = session.get_providers()[0]
            ok = used == provider and np.array_equal(session.run(None, {"x": x})[0], x)
            detail = "loads and runs" if ok else f"listed, but the session fell back to {used}"
            checks.append(Check(f"onnxruntime {provider}", "ok" if ok else "warn", detail))
        except Exception as exc:  # a provider whose libraries are missing raises here
            checks.append(Check(f"onnxruntime {provider}", "warn", f"listed but does not load: {str(exc)[:200]}"))
    checks.insert(0, Check("onnxruntime", "ok", f"version {ort.__version__}",
                           {"loading": [c.name.split(" ", 1)[1] for c in checks if c.status == "ok"]}))
    return checks


def llama_check() -> list[Check]:
    """The llama.cpp build, the CPU kernels chosen for this machine and their self-test verdict."""
    from huatuo_cli.engine.cpu_backend import activate
    from huatuo_cli.errors import HuatuoError

    try:
        llama_cpp = require("llama_cpp")  # a missing package or system library: one line saying which
        backend = activate()
    except HuatuoError as exc:
        return [Check("llama.cpp", "fail", str(exc).replace("\n  hint:", ";"))]
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else str(info)
    features = [part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    build = (f"portable build {backend.build_info['key']} (CPU variants chosen at run time)" if backend.build_info
             else "single-CPU build (not huatuo's portable build: `make install` replaces it)")
    kernels: list[str] = [k for k in ("AVX2", "AVX512", "AVX512_VNNI", "AMX_INT8") if k in features]
    kernels.append("repack on" if backend.repack else "repack off")
    checks = [
        Check("llama.cpp", "ok" if backend.build_info else "warn",
              f"llama-cpp-python {llama_cpp.__version__}, {build}, GPU offload {'yes' if offload else 'no'}",
              {"gpu_offload": offload, "system_info": info.strip(), "build": backend.build_info}),
        Check("llama.cpp CPU kernels", "warn" if backend.fallback else "ok",
              f"{' '.join(kernels)}; {backend.verdict}",
              {"variant": backend.variant, "kernels": kernels, "repack": backend.repack,
               "runnable_variants": backend.ranked, "selftest": backend.tested}),
    ]
    return checks


def bundle_checks() -> list[Check]:
    from huatuo_cli.bundles.bundle import load_bundle
    from huatuo_cli.bundles.locate import find_bundle, installed_bundles
    from huatuo_cli.errors import HuatuoError

    paths = list(installed_bundles())
    try:
        chosen = find_bundle(None, option=None)  # doctor takes no bundle: its hint names none
        if chosen not in paths:
            paths.insert(0, chosen)
    except HuatuoError as exc:
        if not paths:
            return [Check("bundles", "warn", str(exc).splitlines()[0], {"hint": exc.hint})]
    checks = []
    for path in paths:
        try:
            bundle = load_bundle(path, use_cache=False)  # a full re-hash: doctor is where disk corruption shows
            checks.append(Check(f"bundle {path.name}", "ok",
                                f"verified, model id {bundle.manifest_sha256[:12]}, {bundle.manifest.quantization}"))
        except HuatuoError as exc:
            checks.append(Check(f"bundle {path.name}", "fail", str(exc)))
    verified = [p for p, c in zip(paths, checks, strict=True) if c.status == "ok"]
    return checks + speed_checks(verified) + vision_checks(verified)


def speed_checks(paths: list[Path]) -> list[Check]:
    """The speed probe of every verified bundle on this CPU (measured once per machine, build and
    bundle, in a child), and for each model with several quantizations the one `--model NAME` gets."""
    from huatuo_cli.bundles.locate import as_model
    from huatuo_cli.engine import quant_probe
    from huatuo_cli.errors import HuatuoError

    if not paths:
        return []
    try:
        measured = quant_probe.measure(paths)
    except HuatuoError as exc:
        return [Check("speed probe", "warn", str(exc))]
    checks = [Check(f"speed {m.path.name}", "ok" if m.probe else "warn",
                    f"{m.probe.line()} ({m.probe.variant}, {m.probe.threads} threads); about {m.seconds:.1f} s "
                    f"for one image question" if m.probe and m.seconds else m.error,
                    {"probe": asdict(m.probe) if m.probe else None, "seconds": m.seconds})
              for m in measured]
    groups: dict[tuple[str, str], list[quant_probe.Measured]] = {}
    for m in measured:
        model = as_model(m.path)
        if model is not None:
            groups.setdefault((model.name, model.source), []).append(m)
    for (name, _), members in groups.items():
        order = quant_probe.ranked(members)
        if len(members) > 1 and order:
            figures = ", ".join(f"{m.quantization} {m.seconds:.1f} s" for m in order if m.seconds)
            checks.append(Check(f"model {name}", "ok", f"`--model {name}` uses {order[0].quantization} "
                                f"({order[0].path.name}): fastest faithful on this CPU ({figures})",
                                {"chosen": str(order[0].path), "order": [str(m.path) for m in order]}))
    return checks


def vision_checks(paths: list[Path]) -> list[Check]:
    """For every verified bundle with more than one way to encode images on this CPU (an int8 file,
    OpenVINO's provider), the measured figures and the way `ask` takes (`engine.vision_choice`)."""
    from huatuo_cli.bundles.bundle import load_bundle
    from huatuo_cli.engine import vision_choice
    from huatuo_cli.engine.encoder import runs_on_cpu
    from huatuo_cli.engine.session import ENV_VISION_PRECISION, pinned_precision
    from huatuo_cli.errors import HuatuoError

    if not paths or not runs_on_cpu("auto"):
        return []
    checks = []
    for path in paths:
        try:
            bundle = load_bundle(path)
            pinned = pinned_precision(bundle)
            figures = None if pinned else vision_choice.cpu_figures(bundle)
        except HuatuoError as exc:
            checks.append(Check(f"vision {path.name}", "warn", str(exc)))
            continue
        if pinned:
            checks.append(Check(f"vision {path.name}", "ok", f"images encoded by cpu/{pinned}: pinned by "
                                f"{ENV_VISION_PRECISION}", {"chosen": f"cpu/{pinned}", "pinned": True}))
        elif figures:
            bound = vision_choice.cosine_bound(bundle)
            way = vision_choice.choose(figures, bound)
            checks.append(Check(f"vision {path.name}", "ok",
                                f"images encoded by {way.name}: {vision_choice.figures_line(figures, bound)}",
                                {"chosen": way.name, "figures": figures, "cosine_bound": bound}))
    return checks


#: `huatuo serve`'s default address (huatuo_cli/commands/serve_cmd.py; a test keeps them equal)
SERVE_DEFAULT_BIND = ("127.0.0.1", 8765)


def serve_check() -> Check:
    """Whether `huatuo serve` can run here (its ASGI stack imports) and where it listens by default."""
    from importlib import metadata, util

    missing = [name for name in ("starlette", "uvicorn") if util.find_spec(name) is None]
    host, port = SERVE_DEFAULT_BIND
    key = "set" if os.environ.get("HUATUO_API_KEY") else "not set"
    if missing:
        return Check("serve", "warn", f"huatuo serve unavailable: {', '.join(missing)} not installed "
                     f"({install_hint(missing[0])})", {"missing": missing})
    versions = {name: metadata.version(name) for name in ("starlette", "uvicorn")}
    return Check("serve", "ok", f"huatuo serve: starlette {versions['starlette']}, uvicorn {versions['uvicorn']}; "
                 f"default bind {host}:{port} (loopback; other addresses need an API key); HUATUO_API_KEY {key}",
                 {"versions": versions, "default_bind": f"{host}:{port}", "api_key_env": key == "set"})


def engine_checks() -> tuple[list[Check], list[str]]:
    """ONNX Runtime, llama.cpp and bundle checks with Python's sockets refused: (checks, attempts)."""
    saved = {k: os.environ.pop(k) for k in OFFLINE_VARS if k in os.environ}
    try:
        with no_network() as attempts:
            checks = onnx_providers_check() + llama_check() + bundle_checks()
    finally:
        os.environ.update(saved)
    return checks, attempts


def _child_main() -> None:
    """The child of `offline_engine_checks`: run the engine checks, print them as JSON."""
    checks, attempts = engine_checks()
    print(json.dumps({"checks": [asdict(c) for c in checks], "attempts": attempts}))


def offline_engine_checks() -> list[Check]:
    """The engine checks, run in a child process cut off from the network and traced, then one
    "offline" check that says what was watched and what was seen.

    Python-level patches alone miss native code (ONNX Runtime's telemetry is C++), so the child
    runs in an empty network namespace where the OS allows it, under strace where it is
    installed, and the ONNX Runtime telemetry folder is compared before and after.
    """
    import tempfile

    from huatuo_cli.offline import cache_dir, network_calls, telemetry_files, watch_command

    telemetry_before = {p: p.stat().st_mtime_ns for p in telemetry_files(cache_dir())}
    with tempfile.TemporaryDirectory(prefix="huatuo-doctor-") as tmp:
        watch = watch_command(Path(tmp) / "network.trace")
        env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
        command = watch.prefix + [sys.executable, "-c", "from huatuo_cli.doctor import _child_main; _child_main()"]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [Check("offline", "fail", f"the engine checks could not run in a child process: {exc}")]
        calls = network_calls(watch.trace_file) if watch.trace_file else []
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:300]
        return [Check("offline", "fail", f"the engine checks died in their child process (exit {proc.returncode}): {tail}")]
    checks = [Check(**c) for c in report["checks"]]
    attempts: list[str] = report["attempts"]
    written = [p for p in telemetry_files(cache_dir()) if telemetry_before.get(p) != p.stat().st_mtime_ns]
    checked = (f"engines imported, sessions run and bundles verified in a child process in {watch.isolation}, "
               f"{watch.tracing}, Python sockets refused, no offline variables set "
               f"({', '.join(OFFLINE_VARS)}), ONNX Runtime telemetry folder ({cache_dir() / ORT_TELEMETRY_DIR}) "
               "compared before and after")
    problems = []
    if calls:
        problems.append(f"{len(calls)} network system calls: {calls[:3]}")
    if attempts:
        problems.append(f"{len(attempts)} Python network attempts blocked: {sorted(set(attempts))}")
    if written:
        problems.append(f"telemetry files written: {[p.name for p in written]}")
    if problems:
        checks.append(Check("offline", "fail", "; ".join(problems) + f" (checked: {checked})",
                            {"network_calls": calls, "attempts": attempts}))
    else:
        checks.append(Check("offline", "ok", f"0 network system calls, 0 Python network attempts, no telemetry "
                                              f"file written (checked: {checked})",
                            {"isolation": watch.isolation, "tracing": watch.tracing}))
    return checks


def ray_check(address: str | None = None) -> Check:
    """`batch --ray`: whether Ray (the optional `cluster` extra) is installed, and with RAY_ADDRESS set
    whether the cluster's head answers there (a TCP connect; ray itself is not imported)."""
    import importlib.util
    import socket

    if importlib.util.find_spec("ray") is None:
        return Check("ray", "info", f"not installed (only `batch --ray` needs it: {install_hint('ray')})")
    from importlib.metadata import version

    installed = f"ray {version('ray')} installed"
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    if not address or address == "auto":
        return Check("ray", "info", f"{installed}; no cluster named (set RAY_ADDRESS=HOST:PORT to check one)")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except (OSError, ValueError) as exc:
        return Check("ray", "warn", f"{installed}; the cluster at {address} is not reachable "
                                    f"({getattr(exc, 'strerror', None) or exc})", {"address": address})
    return Check("ray", "ok", f"{installed}; the cluster at {address} is reachable", {"address": address})


def run_checks() -> list[Check]:
    """Every check; engine imports and bundle loads run in a child process without network."""
    return [cpu_check(), memory_check(), gpu_check(), serve_check()] + offline_engine_checks() + [ray_check()]
