"""Issue 19 item 5: llama-cpp-python stays usable in huatuo's environment.

huatuo's portable llama.cpp build ships ggml's CPU backend once per x86-64 level and loads none by
itself, so a plain `llama_cpp.Llama(...)` used to fail with "Failed to load model". The build's
`import llama_cpp` now loads the backend huatuo chose and self-tested (`cpu_backend.autoload`), or
says what to call. Each case runs in a fresh interpreter that never imports huatuo itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources

MODEL = str(resources.files("huatuo_cli").joinpath("data", "selftest-q8_0.gguf"))

#: a user's script: llama-cpp-python's own API, nothing of huatuo
PLAIN = f"""
import math, llama_cpp
llm = llama_cpp.Llama(model_path={MODEL!r}, n_ctx=64, verbose=False)
tokens = llm.tokenize(b"The chest radiograph shows")
llm.eval(tokens)
assert all(math.isfinite(x) for x in llm.scores[len(tokens) - 1])
print("evaluated", len(tokens))
"""


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_plain_llama_cpp_loads_and_evaluates_a_model():
    proc = run(PLAIN + "import huatuo_cli.engine.cpu_backend as b; print('kernels', b.describe())")
    assert proc.returncode == 0, proc.stderr
    assert "evaluated" in proc.stdout
    from huatuo_cli.engine.cpu_backend import describe

    assert f"kernels {describe()}" in proc.stdout  # the variant and repacking huatuo itself runs with


def test_without_the_hook_the_portable_build_has_no_cpu_backend():
    """What the hook fixes: with it switched off, llama-cpp-python cannot load any model."""
    proc = run(PLAIN, HUATUO_LLAMA_AUTOLOAD="0")
    assert proc.returncode != 0
    assert "Failed to load model" in proc.stderr


def test_without_huatuo_the_import_says_what_to_call():
    """huatuo-cli not importable (as if uninstalled): the import still works and says what to call."""
    proc = run("import sys; sys.modules['huatuo_cli.engine.cpu_backend'] = None\nimport llama_cpp; print('imported')")
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr
    assert "loads no CPU backend by itself" in proc.stderr and "ggml_backend_load" in proc.stderr


def test_when_huatuo_cannot_choose_a_backend_the_import_says_what_to_call():
    """The choice fails (here: a forced variant that does not exist; likewise a self-test that rules
    out every variant): `import llama_cpp` still works and one stderr line says what to call."""
    proc = run("import llama_cpp; print('imported')", HUATUO_CPU_VARIANT="no-such-level")
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr
    assert "llama_cpp: no CPU backend loaded (HUATUO_CPU_VARIANT=no-such-level" in proc.stderr
    assert "huatuo doctor" in proc.stderr and "load_variant" in proc.stderr


def test_the_self_test_childs_switch_is_honoured_by_huatuo_too():
    """HUATUO_LLAMA_AUTOLOAD=0 (set for the self-test child) stops `autoload` itself, not only the
    hook: a child that chose a backend would start a self-test child of its own, and so on."""
    code = ("from huatuo_cli.engine import cpu_backend as b\nb.autoload()\n"
            "print('active' if b._ACTIVE else 'none')")
    assert run(code, HUATUO_LLAMA_AUTOLOAD="0").stdout.strip() == "none"
    assert run(code).stdout.strip() == "active"  # the same call without the switch chooses one
