"""How many threads llama.cpp gets: the physical cores this process may use that nothing else is
keeping busy, looked at again before every answer.

llama.cpp's workers meet at a barrier after every operation and spin while they wait. A thread per
logical CPU (`os.cpu_count()`) puts two workers on one core's hyper-threads, and a viewer running
beside huatuo takes a core from a worker that all the others then wait for, at every barrier.
Measured on the 2-core development machine with one busy process beside a 0.5B Q4_K_M model:
2 threads decode 19 tok/s, 1 thread 32 tok/s; idle, 2 threads decode 53 tok/s (README "llama.cpp
CPU kernels"). So the count follows the idle physical cores, from /proc/stat, before each answer
(`llama_set_n_threads`); llama.cpp's results do not depend on it (tested bit-identical logits).
Letting workers sleep instead (`OMP_WAIT_POLICY=PASSIVE`) was measured too: it halves idle decode.
`--threads N` fixes the count.
"""

from __future__ import annotations

import os
from pathlib import Path


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Distinct (package, core) pairs among `cpus`; the CPU count where topology is unknown."""
    cpus = allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def default_threads() -> int:
    """The most threads huatuo gives llama.cpp: one per physical core this process may use."""
    return physical_cores()


class BusyElsewhere:
    """Cores that other processes kept busy since the last call, from /proc/stat minus our own time.

    `cores()` returns None when it cannot tell (no /proc, or under 50 ms since the last look).
    """

    MIN_INTERVAL_TICKS = 5  # per CPU: 50 ms at USER_HZ 100

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self.n_cpus = os.cpu_count() or 1
        self._last = self._sample()

    def _sample(self) -> tuple[int, int, int] | None:
        """(all CPU ticks, busy CPU ticks, this process's ticks)."""
        try:
            fields = [int(x) for x in (self.proc / "stat").read_text().splitlines()[0].split()[1:9]]
            own = (self.proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        total = sum(fields)
        idle = fields[3] + fields[4]  # idle + iowait
        return total, total - idle, int(own[11]) + int(own[12])  # utime + stime

    def cores(self) -> float | None:
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        d_total, d_busy, d_own = (a - b for a, b in zip(now, last, strict=True))
        if d_total < self.MIN_INTERVAL_TICKS * self.n_cpus:
            self._last = last  # too short to tell: keep measuring from the older sample
            return None
        return max(0.0, (d_busy - d_own) / (d_total / self.n_cpus))


def threads_for_now(busy_elsewhere: float | None, most: int | None = None) -> int:
    """Physical cores minus the cores others keep busy (rounded), at least 1."""
    most = most or default_threads()
    if busy_elsewhere is None:
        return most
    return max(1, min(most, round(most - busy_elsewhere)))
