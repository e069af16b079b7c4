"""The engine runs on every x86-64 CPU: the portable build, the run-time self-test guard, qemu, AMX.

What is real here: the installed llama.cpp build and its variant libraries, child processes that
really die (a variant library that executes `ud2` or writes through NULL when ggml initialises it,
and a self-test child that dereferences NULL before its repacked decode, where the miscompiled AMX
kernel kills it), the whole `huatuo ask` on a converted tiny bundle, an older CPU emulated by
`qemu-x86_64 -cpu Haswell`, and, where the machine has AMX, batched decodes through AMX-repacked
Q4_K weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

from huatuo_cli.engine import cpu_backend, cpu_verdicts
from huatuo_cli.engine.threads import BusyElsewhere, physical_cores, threads_for_now

ROOT = Path(__file__).resolve().parent.parent
LIB_DIR = Path(llama_cpp.__file__).parent / "lib"
HUATUO = [sys.executable, "-m", "huatuo_cli"]


def _llama_wheel():
    spec = importlib.util.spec_from_file_location("llama_wheel", ROOT / "packaging" / "llama_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _cpu_model() -> str:
    return cpu_verdicts.cpu_model() or "unknown CPU"


# --- the build ------------------------------------------------------------------------------------

# objdump of ggml_backend_amx_mul_mat as GCC 12 -O3 compiles it without -fno-dse (seen here) and with it
MISCOMPILED = """
   8656e:	vpxor  %xmm0,%xmm0,%xmm0
   86572:	vmovdqa64 %zmm0,0xc0(%rsp)
   8657a:	movb   $0x1,0xc0(%rsp)
   86582:	ldtilecfg 0xc0(%rsp)
"""
CORRECT = """
   8601e:	vpxor  %xmm0,%xmm0,%xmm0
   86022:	mov    0x105527(%rip),%rdx        # 18b550 <_ZTSN4ggml3cpu3amx17extra_buffer_typeE@@Base+0x6b0>
   86029:	vmovdqa64 %zmm0,0xc0(%rsp)
   86031:	vmovdqa 0x105507(%rip),%xmm0        # 18b540 <_ZTSN4ggml3cpu3amx17extra_buffer_typeE@@Base+0x6a0>
   86039:	movb   $0x1,0xc0(%rsp)
   86041:	mov    %rdx,0xf0(%rsp)
   86049:	vmovdqa %xmm0,0xd0(%rsp)
   86052:	ldtilecfg 0xc0(%rsp)
"""
#: the .rodata those loads read in the built library: colsb[0..7], then rows[0..7]
RODATA = {0x18b540: bytes.fromhex("40004000200020004000400040004000"), 0x18b550: bytes.fromhex("0808101010101010")}
#: the same function as zig's clang 22 compiles it (the CPU build): rows through an immediate in a
#: register, colsb from .rodata below the code (a negative %rip offset)
CLANG = """
   9c6b0:	vpxor  %xmm0,%xmm0,%xmm0
   9c6b4:	vmovdqa64 %zmm0,0xc0(%rsp)
   9c6bc:	movb   $0x1,0xc0(%rsp)
   9c6c4:	movabs $0x1010101010100808,%rcx
   9c6ce:	mov    %rcx,0xf0(%rsp)
   9c6d6:	vmovdqa -0x777ae(%rip),%xmm0        # 24f30 <_ZL13kvalues_iq4nl+0x480>
   9c6de:	vmovdqa %xmm0,0xd0(%rsp)
   9c6e7:	ldtilecfg 0xc0(%rsp)
"""


def test_tile_config_check_tells_the_miscompiled_kernel_from_a_correct_one():
    wheel = _llama_wheel()
    assert wheel.tile_config_stores(MISCOMPILED) == [{"colsb": False, "rows": False}]
    assert wheel.tile_config_stores(CORRECT) == [{"colsb": True, "rows": True}]
    read = lambda address, size: RODATA[address][:size]  # noqa: E731
    assert wheel.tile_configs(CORRECT, read) == [wheel.AMX_TILE_CONFIG]
    assert wheel.tile_configs(MISCOMPILED, read) == [bytes([1]) + bytes(63)]  # palette only: rows 0, colsb 0
    wrong_rows = {**RODATA, 0x18b550: bytes.fromhex("0808080810101010")}
    assert wheel.tile_configs(CORRECT, lambda a, n: wrong_rows[a][:n]) != [wheel.AMX_TILE_CONFIG]
    clang_rodata = {0x24f30: RODATA[0x18b540]}
    assert wheel.tile_configs(CLANG, lambda a, n: clang_rodata[a][:n]) == [wheel.AMX_TILE_CONFIG]
    wrong = CLANG.replace("$0x1010101010100808", "$0x1010101008080808")
    assert wheel.tile_configs(wrong, lambda a, n: clang_rodata[a][:n]) != [wheel.AMX_TILE_CONFIG]


def test_installed_build_is_portable_with_every_cpu_variant():
    info = cpu_backend.build_info(LIB_DIR)
    assert info is not None, "llama-cpp-python is not huatuo's portable build (run `make install`)"
    wheel = _llama_wheel()
    assert info["cmake_flags"] == list(wheel.CMAKE_FLAGS) and info["key"] == wheel.build_key()["key"]
    names = {p.name for p in LIB_DIR.glob("libggml-cpu-*.so")}
    for variant in ("x64", "sse42", "haswell", "skylakex", "icelake", "zen4", "alderlake", "sapphirerapids"):
        assert f"libggml-cpu-{variant}.so" in names
    # the always-loaded libraries are built for plain x86-64: no AVX-512 register anywhere in them
    for lib in ("libggml-base.so", "libllama.so"):
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(LIB_DIR / lib)], capture_output=True,
                             text=True, check=True).stdout
        assert "%zmm" not in out and "%ymm" not in out, f"{lib} is compiled for a newer CPU than x86-64"


def test_installed_amx_kernel_loads_a_complete_tile_configuration():
    assert _llama_wheel().check_amx_library(LIB_DIR / "libggml-cpu-sapphirerapids.so") == "ok"


# --- threads ----------------------------------------------------------------------------------------

def test_threads_follow_physical_cores_not_hyperthreads(tmp_path):
    # 4 logical CPUs, 2 cores with 2 hyper-threads each
    for cpu, core in ((0, 0), (1, 1), (2, 0), (3, 1)):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert physical_cores({0, 1, 2, 3}, sysfs=tmp_path) == 2
    assert physical_cores({0, 2}, sysfs=tmp_path) == 1  # affinity to one core's two threads
    assert physical_cores({0, 1, 2, 3}, sysfs=tmp_path / "missing") == 4


def write_proc(proc: Path, total_busy: int, total_idle: int, own: int) -> None:
    """A /proc with the two files BusyElsewhere reads: aggregate CPU ticks, and this process's."""
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "stat").write_text(f"cpu  {total_busy} 0 0 {total_idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")
    (proc / "self" / "stat").write_text("4242 (python (x)) S " + " ".join(["0"] * 10) + f" {own} 0 0 0\n")


def test_threads_follow_the_cores_other_processes_leave_idle(tmp_path, tiny_bundle):
    from huatuo_cli.engine.llm import LlamaEngine

    proc = tmp_path / "proc"
    write_proc(proc, total_busy=1000, total_idle=1000, own=0)
    busy = BusyElsewhere(proc)
    busy.n_cpus = 2
    # 1 s on 2 CPUs (200 ticks): 150 busy, 60 of them ours -> 0.9 cores busy elsewhere
    write_proc(proc, total_busy=1150, total_idle=1050, own=60)
    assert busy.cores() == pytest.approx(0.9)
    write_proc(proc, total_busy=1151, total_idle=1050, own=60)  # 10 ms later: too short to tell
    assert busy.cores() is None
    assert threads_for_now(0.9, 2) == 1 and threads_for_now(0.2, 2) == 2 and threads_for_now(3.5, 2) == 1
    assert threads_for_now(None, 4) == 4 and threads_for_now(1.0, 4) == 3

    engine = LlamaEngine(tiny_bundle / "llm-f16.gguf", n_ctx=256, n_threads=None)
    engine._busy = BusyElsewhere(proc)
    engine._busy.n_cpus = 2
    idle = engine.prefill([[1, 2, 3, 4]])
    write_proc(proc, total_busy=1350, total_idle=1250, own=60)  # another process kept one core busy
    loaded = engine.prefill([[1, 2, 3, 4]])
    lib = engine._lib
    assert engine.threads == 1 and lib.llama_n_threads(engine._ctx) == 1 == lib.llama_n_threads_batch(engine._ctx)
    assert (idle == loaded).all()  # fewer threads, the same arithmetic
    fixed = LlamaEngine(tiny_bundle / "llm-f16.gguf", n_ctx=256, n_threads=2)  # --threads 2
    fixed.prefill([[1, 2, 3, 4]])
    assert fixed._busy is None and lib.llama_n_threads(fixed._ctx) == 2


# --- the run-time guard -------------------------------------------------------------------------------

FAULTY_VARIANT = r"""
int ggml_backend_score(void) { return 1 << 30; }  /* claims to be the best variant for this CPU */
void * ggml_backend_init(void) {
#ifdef FAULT_SIGILL
    __builtin_trap();          /* ud2: SIGILL, as code for an instruction set this CPU lacks */
#else
    *(volatile int *)0 = 0;    /* SIGSEGV */
#endif
    return 0;
}
"""


def variants_with_a_faulty_best(tmp_path: Path, fault: str) -> Path:
    """The installed variant libraries plus one that ranks first and dies as ggml initialises it."""
    folder = tmp_path / "variants"
    folder.mkdir()
    for lib in LIB_DIR.glob("libggml-cpu-*.so"):
        (folder / lib.name).symlink_to(lib)
    src = tmp_path / "faulty.c"
    src.write_text(FAULTY_VARIANT)
    subprocess.run(["cc", "-shared", "-fPIC", "-O0", f"-DFAULT_{fault}", "-o",
                    str(folder / "libggml-cpu-zzfaulty.so"), str(src)], check=True)
    return folder


def ask(bundle: Path, env: dict, *prefix: str) -> subprocess.CompletedProcess:
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm", download=False)
    cmd = [*prefix, *HUATUO, "ask", "--json", "--max-tokens", "12", "--model", str(bundle), ct,
           "Is there a pleural effusion?"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)


def guard_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "self-test" in line]


@pytest.fixture
def child_env(tmp_path):
    env = dict(os.environ)
    env.pop(cpu_backend.ENV_VARIANT, None)
    env.pop(cpu_backend.ENV_REPACK, None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # no verdict from an earlier test
    return env


@pytest.mark.slow
@pytest.mark.parametrize("fault,signal_name", [("SIGILL", "SIGILL"), ("SIGSEGV", "SIGSEGV")])
def test_a_variant_that_dies_in_the_self_test_is_skipped_and_ask_still_answers(tmp_path, tiny_bundle, child_env,
                                                                                 fault, signal_name):
    baseline = ask(tiny_bundle, child_env)
    assert baseline.returncode == 0, baseline.stderr
    expected = json.loads(baseline.stdout)
    assert guard_lines(baseline.stderr) == []  # nothing failed: nothing said

    env = dict(child_env, XDG_CACHE_HOME=str(tmp_path / "cache2"),
               HUATUO_CPU_VARIANTS_DIR=str(variants_with_a_faulty_best(tmp_path, fault)))
    first = ask(tiny_bundle, env)
    assert first.returncode == 0, first.stderr
    assert "Segmentation fault" not in first.stderr and "Traceback" not in first.stderr
    lines = guard_lines(first.stderr)
    assert len(lines) == 1 and f"zzfaulty kernels died ({signal_name})" in lines[0], first.stderr
    record = json.loads(first.stdout)
    assert record["provider"]["llm_cpu"] == expected["provider"]["llm_cpu"]  # the next correct variant
    assert record["tokens"] == expected["tokens"] and record["answer"] == expected["answer"]

    # the verdict is cached for this machine and build: the next run neither re-tests nor says it again
    verdicts = json.loads((tmp_path / "cache2" / "huatuo" / "cpu-selftest.json").read_text())["verdicts"]
    assert verdicts["zzfaulty"]["plain"] == f"died ({signal_name})"
    again = ask(tiny_bundle, env)
    assert again.returncode == 0 and guard_lines(again.stderr) == [], again.stderr
    assert json.loads(again.stdout)["answer"] == expected["answer"]

    # doctor shows the verdict
    doctor = subprocess.run([*HUATUO, "doctor", "--json"], capture_output=True, text=True, env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    kernels = checks["llama.cpp CPU kernels"]
    assert kernels["status"] == "warn" and f"died ({signal_name})" in kernels["detail"]
    assert kernels["data"]["selftest"]["zzfaulty"]["plain"] == f"died ({signal_name})"


@pytest.mark.slow
def test_a_self_test_that_dies_in_repacked_kernels_turns_repacking_off(tmp_path, tiny_bundle, child_env):
    baseline = ask(tiny_bundle, child_env)
    expected = json.loads(baseline.stdout)
    variant = expected["provider"]["llm_cpu"].split(",")[0]
    # repacking asked for (here it is used only where it is AMX), and the child dies where AMX did
    env = dict(child_env, HUATUO_SELFTEST_FAULT="repack", HUATUO_CPU_REPACK="1", XDG_CACHE_HOME=str(tmp_path / "cache2"))
    first = ask(tiny_bundle, env)
    assert first.returncode == 0, first.stderr
    lines = guard_lines(first.stderr)
    assert len(lines) == 1 and "weight repacking died (SIGSEGV)" in lines[0], first.stderr
    record = json.loads(first.stdout)
    assert record["provider"]["llm_cpu"] == f"{variant}, repack off"
    # the same greedy answer (an F16 bundle: repacking never changed its arithmetic)
    assert record["tokens"] == expected["tokens"] and record["answer"] == expected["answer"]


def test_self_test_passes_on_this_machine_and_picks_the_best_variant(tmp_path, child_env):
    proc = subprocess.run([sys.executable, "-c", "from huatuo_cli.engine import cpu_backend as c; "
                           "import json; print(json.dumps(c.activate().as_dict()))"],
                          capture_output=True, text=True, env=child_env)
    assert proc.returncode == 0, proc.stderr
    backend = json.loads(proc.stdout)
    assert backend["build"] == "portable" and backend["variant"] == backend["ranked"][0], backend
    assert backend["repack"] == (backend["variant"] in cpu_backend.AMX_VARIANTS) and not backend["fallback"], backend
    verdict = backend["tested"][backend["variant"]]
    assert verdict["plain"] == "ok" and verdict["repack"] == "ok", (verdict, _cpu_model())


NO_GPU_BACKEND = r"""
#include <stdio.h>
#include <stdlib.h>
void * ggml_backend_init(void) {           /* what a GPU backend does without its driver or a GPU */
    FILE * seen = fopen(getenv("FAKE_GPU_SEEN"), "w");   /* ... after saying it was asked */
    if (seen) fclose(seen);
    return 0;
}
"""


@pytest.mark.slow
def test_a_gpu_backend_that_finds_no_gpu_leaves_the_answer_to_the_cpu(tmp_path, tiny_bundle, child_env):
    """A CUDA build ships libggml-cuda.so beside the CPU variants; on a workstation without a usable
    GPU it registers nothing, and the same answer comes from the CPU."""
    baseline = ask(tiny_bundle, child_env)
    folder = tmp_path / "variants"
    folder.mkdir()
    for lib in LIB_DIR.glob("libggml-cpu-*.so"):
        (folder / lib.name).symlink_to(lib)
    (tmp_path / "cuda.c").write_text(NO_GPU_BACKEND)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / "libggml-cuda.so"), str(tmp_path / "cuda.c")],
                   check=True)
    assert cpu_backend.gpu_backends(folder) == [folder / "libggml-cuda.so"]
    seen = tmp_path / "gpu-backend-asked"
    done = ask(tiny_bundle, dict(child_env, HUATUO_CPU_VARIANTS_DIR=str(folder), FAKE_GPU_SEEN=str(seen)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert seen.exists()  # huatuo offered llama.cpp the GPU backend
    record, expected = json.loads(done.stdout), json.loads(baseline.stdout)
    assert record["provider"]["llm_gpu_offload"] is False and record["answer"] == expected["answer"]


@pytest.mark.slow
def test_the_cuda_runtime_is_taken_from_nvidias_wheels(tmp_path, tiny_bundle, child_env):
    """libggml-cuda.so needs libcudart.so.13 and cuBLAS, which the GPU artifact installs as NVIDIA's wheels
    (site-packages/nvidia/cu13/lib), out of the backend's own search path: huatuo loads them first, so
    the backend is offered to llama.cpp. Stand-ins here; without them on the path, it is not."""
    folder, site = tmp_path / "variants", tmp_path / "site"
    nvidia = site / "nvidia" / "cu13" / "lib"
    folder.mkdir()
    nvidia.mkdir(parents=True)
    for lib in LIB_DIR.glob("libggml-cpu-*.so"):
        (folder / lib.name).symlink_to(lib)
    (tmp_path / "stub.c").write_text("int huatuo_stub(void) { return 0; }\n")
    for name in cpu_backend.CUDA_LIBRARIES:
        subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(nvidia / name),
                        str(tmp_path / "stub.c")], check=True)
    (tmp_path / "cuda.c").write_text(NO_GPU_BACKEND)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / "libggml-cuda.so"), str(tmp_path / "cuda.c"),
                    "-Wl,--no-as-needed", *(str(nvidia / name) for name in cpu_backend.CUDA_LIBRARIES)], check=True)
    env = dict(child_env, HUATUO_CPU_VARIANTS_DIR=str(folder))
    without, with_wheels = tmp_path / "asked-without", tmp_path / "asked-with"
    done = ask(tiny_bundle, dict(env, FAKE_GPU_SEEN=str(without)))
    assert done.returncode == 0 and not without.exists()  # libcudart.so.13 not found: not offered, CPU answers
    done = ask(tiny_bundle, dict(env, FAKE_GPU_SEEN=str(with_wheels), PYTHONPATH=str(site)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert with_wheels.exists()


def test_a_variant_whose_plain_kernels_compute_wrong_numbers_is_not_usable(tmp_path):
    """The self-test child, real engine: logits off from the expected ones by more than the bound are
    a 'mismatch' verdict (here the expectation is doubled, as a kernel with a wrong scale would be)."""
    import numpy as np

    data = Path(cpu_backend.__file__).parent.parent / "data"
    models = [str(data / name) for name in cpu_verdicts.SELFTEST_MODELS]
    best = cpu_backend.rank_variants(LIB_DIR)[0].path

    def child(expected: Path) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "huatuo_cli.engine.cpu_selftest", str(best), *models,
                              "--expected", str(expected)], capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    shipped = data / cpu_verdicts.SELFTEST_EXPECTED
    assert [s["result"] for s in child(shipped)] == ["ok", "ok"]
    with np.load(shipped) as arrays:
        np.savez(tmp_path / "wrong.npz", **{k: v * 2 for k, v in arrays.items()})
    (stage,) = child(tmp_path / "wrong.npz")
    assert stage["stage"] == "plain" and stage["result"].startswith("mismatch"), stage


# --- other CPUs -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_q4_bundle(make_checkpoint, tmp_path_factory) -> Path:
    """The demo's bundle: the default tiny checkpoint at q4_k_m."""
    from huatuo_convert.bundle_build import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny-q4_k_m"
    build_bundle(make_checkpoint(), out, "q4_k_m")
    return out


@pytest.mark.slow
def test_ask_under_an_emulated_haswell_cpu_answers_as_natively(tmp_path, tiny_q4_bundle, child_env):
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-user is a test dependency (make system-deps installs it)"
    emulated = ask(tiny_q4_bundle, child_env, qemu, "-cpu", "Haswell")
    assert emulated.returncode == 0, emulated.stderr[-3000:]
    record = json.loads(emulated.stdout)
    # cpuid says Haswell (AVX2, no AVX-512): the haswell variant is chosen, not the host's
    assert record["provider"]["llm_cpu"].startswith("haswell,"), record["provider"]
    native = ask(tiny_q4_bundle, dict(child_env, HUATUO_CPU_VARIANT="haswell"))
    assert native.returncode == 0, native.stderr
    # the same greedy tokens (the record keeps their text and count) as the same kernels natively
    natively = json.loads(native.stdout)
    assert natively["answer"] == record["answer"] and natively["tokens"] == record["tokens"] > 0


@pytest.mark.slow
def test_ask_answers_with_a_q4_k_m_bundle_of_hidden_1024(make_checkpoint, tmp_path_factory, child_env):
    """The issue's reproducer: real Q4_K rows (1024 = 4 k-quant blocks) through batched prefill of
    the image positions; on an AMX machine that is the AMX-repacked path that used to die."""
    from huatuo_convert.bundle_build import build_bundle

    bundle = tmp_path_factory.mktemp("bundle") / "hidden1024-q4_k_m"
    build_bundle(make_checkpoint(hidden_size=1024, intermediate_size=2048, num_heads=8, num_kv_heads=2), bundle,
                 "q4_k_m")
    done = ask(bundle, child_env)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    record = json.loads(done.stdout)
    assert record["tokens"] and record["provider"]["llm_cpu"], record
    print(f"answered on {_cpu_model()} with {record['provider']['llm_cpu']}")


@pytest.mark.skipif("amx_tile" not in _cpu_flags(), reason="needs a CPU with AMX (Intel Sapphire Rapids or later)")
def test_amx_repacked_q4_k_weights_decode_in_batches(tmp_path, child_env):
    """On AMX hardware: the sapphirerapids variant passes its self-test with repacking, and a batched
    decode really goes through AMX buffers (llama.cpp logs their size)."""
    print(f"running on {_cpu_model()}")
    code = ("import json; from huatuo_cli.engine import cpu_backend as c; b = c.activate(); "
            "print(json.dumps(b.as_dict()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env)
    assert proc.returncode == 0, proc.stderr
    backend = json.loads(proc.stdout)
    assert backend["variant"] == "sapphirerapids" and backend["repack"], (backend, _cpu_model())
    model = Path(cpu_backend.__file__).parent.parent / "data" / "selftest-q4_k_m.gguf"
    code = ("from huatuo_cli.engine.cpu_backend import llama; L = llama(); "
            f"m = L.Llama({str(model)!r}, n_ctx=256, n_batch=64, n_ubatch=64, logits_all=True, verbose=True); "
            "m.eval(list(range(5, 133))); print('decoded', len(m.scores))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "AMX" in proc.stderr and "decoded" in proc.stdout, proc.stderr[-2000:]
