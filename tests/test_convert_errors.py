"""Issue 11 items 7 and 8: `convert` on bad input or an unwritable place is one clear error, and a
killed conversion's hidden leftovers are removed by the next run (Ctrl-C stops quantization)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from huatuo_cli.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, ["convert", *args])


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_malformed_config_json_is_one_line_error(make_checkpoint, tmp_path, content):
    src = tmp_path / "model"
    shutil.copytree(make_checkpoint(), src)
    (src / "config.json").write_bytes(content.encode("latin-1"))
    for args in (["gguf", str(src), str(tmp_path / "x.gguf")], ["all", str(src), str(tmp_path / "bundle")]):
        res = run(*args)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert "config.json in" in res.output and ("not valid JSON" in res.output or "not a JSON object" in res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left behind


@pytest.fixture
def read_only_dir(tmpfs):
    return tmpfs("ro,size=64k")


@pytest.mark.parametrize("command", ["gguf", "all", "vision"])
def test_convert_into_read_only_folder_is_one_line_error(make_checkpoint, read_only_dir, command):
    out = read_only_dir / ("x.gguf" if command == "gguf" else "bundle")
    res = run(command, str(make_checkpoint()), str(out))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "Read-only file system" in res.output


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_killed_convert_leftovers_are_removed_by_the_next_run(make_checkpoint, tmp_path):
    src, out = make_checkpoint(), tmp_path / "llm.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "huatuo_cli", "convert", "gguf", str(src), str(out),
                             "--quant", "q4_k_m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".llm.gguf.") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "convert ended before writing a temp file"
        time.sleep(0.01)
    proc.kill()  # kill -9: nothing in the process can clean up
    proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert left  # what the issue saw: hidden files left behind
    live = tmp_path / f".llm.gguf.{os.getpid()}-abc.tmp"  # a live writer's file (this process) is kept
    live.write_bytes(b"busy")
    older = tmp_path / f".llm.gguf.{_dead_pid()}-xyz.partial"
    older.mkdir()
    (older / "part").write_bytes(b"x")
    res = run("gguf", str(src), str(out), "--quant", "q4_k_m")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [live.name]


def test_ctrl_c_during_quantization_stops_it_at_once(make_checkpoint, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while llama.cpp quantizes: the conversion
    stops, nothing is left behind, no traceback. On main the interrupt landed in llama-cpp's log
    callback, was dropped, and quantization went on."""
    import psutil  # the dev extra
    out = tmp_path / "llm.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "huatuo_cli", "convert", "gguf", str(make_checkpoint()), str(out),
                             "--quant", "q4_k_m", "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    quantizer = None
    while quantizer is None and proc.poll() is None:
        try:
            quantizer = next((c for c in psutil.Process(proc.pid).children()
                              if "spawn_main" in " ".join(c.cmdline())), None)
        except psutil.Error:
            pass
        time.sleep(0.005)
    assert quantizer is not None, "quantization never ran in an interruptible child"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert "Aborted" in stderr
    assert not quantizer.is_running() or quantizer.status() == psutil.STATUS_ZOMBIE
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no .tmp, no .f16


def test_llama_cpp_log_is_quiet_by_default_and_shown_with_verbose(make_checkpoint, tmp_path):
    """`convert gguf --quant q4_k_m` printed ~99 llama.cpp lines and a ResourceWarning; now none,
    and `huatuo --verbose` shows llama.cpp's log through huatuo's logging."""
    def convert(*flags: str) -> str:
        res = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-m", "huatuo_cli", *flags, "convert",
                              "gguf", str(make_checkpoint()), str(tmp_path / "llm.gguf"), "--quant", "q4_k_m",
                              "--force"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        return res.stderr

    quiet = convert()
    assert quiet.strip() == "" , quiet
    loud = convert("--verbose")
    assert "huatuo: huatuo.llama_cpp: llama_model_quantize" in loud or "huatuo.llama_cpp: " in loud
    assert "ResourceWarning" not in loud


def test_long_convert_steps_show_progress_on_a_terminal(make_checkpoint, tmp_path):
    """On a terminal (a pty here) `convert gguf` shows a bar per long step; piped, nothing (above)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "huatuo_cli", "convert", "gguf", str(make_checkpoint()),
                             str(tmp_path / "llm.gguf"), "--quant", "q4_k_m", "--no-verify"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.wait(timeout=300) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "writing f16 tensors" in text and "quantizing to q4_k_m (llama.cpp)" in text, text[-2000:]
