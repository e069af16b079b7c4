"""A real two-node Ray cluster on 127.0.0.1 for the `batch --ray` tests and the benchmark.

`ray start --head` and `ray start --address` (a second node) in temp dirs of their own, each with
one CPU and a small object store; `stop()` kills exactly the processes of those temp dirs (and
their children), never any other Ray on the machine. A node is "killed" the same way: its raylet
and workers, SIGKILL, as when a machine is lost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE = "100000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_DISABLE_DOCKER_CPU_WARNING="1")
    env.pop("RAY_ADDRESS", None)
    return dict(env, **(extra or {}))


class LocalCluster:
    def __init__(self, base: Path, nodes: int = 2, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.env = ray_env(env)  # the nodes' environment: the actors' audit trail goes to its XDG_DATA_HOME
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dirs: list[Path] = []
        # short paths: a Unix socket path must stay under 108 bytes
        for i in range(nodes):
            folder = Path("/tmp") / f"rt{os.getpid()}-{self.port}-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            self.dirs.append(folder)
        self.start()

    def _start(self, i: int) -> None:
        common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", f"--temp-dir={self.dirs[i]}",
                  "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        if i == 0:
            args = [RAY, "start", "--head", f"--port={self.port}", "--include-dashboard=false", *common]
        else:
            args = [RAY, "start", f"--address={self.address}", *common]
        subprocess.run(args, check=True, env=self.env, capture_output=True, timeout=300)

    def start(self) -> None:
        for i in range(len(self.dirs)):
            self._start(i)

    def processes(self, i: int) -> list[psutil.Process]:
        """The processes of node i: those naming its temp dir, and all their children."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.dirs[i]) in part for part in proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return list(found.values())

    def kill_node(self, i: int) -> None:
        procs = self.processes(i)
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)

    def stop(self) -> None:
        for i in reversed(range(len(self.dirs))):
            self.kill_node(i)
        import shutil

        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)
