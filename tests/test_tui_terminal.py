"""While the app runs, native libraries' writes to descriptor 2 go to a log, and Textual (which
draws through `sys.__stderr__`) still reaches the terminal."""

from __future__ import annotations

import stat
import subprocess
import sys

CHILD = """
import os, sys
from pathlib import Path
from huatuo_cli.tui.terminal import native_stderr_to_log
with native_stderr_to_log(Path(sys.argv[1])):
    os.write(2, b"llama_context: as from C\\n")   # what llama.cpp does
    sys.__stderr__.write("drawn by textual\\n")    # what Textual's driver does
    sys.__stderr__.flush()
os.write(2, b"after the app\\n")
"""


def test_native_stderr_goes_to_the_log_and_textual_to_the_terminal(tmp_path):
    log = tmp_path / "cache" / "native.log"
    done = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, check=True)
    assert done.stderr == "drawn by textual\nafter the app\n"
    assert log.read_text() == "llama_context: as from C\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
