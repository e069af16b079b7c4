"""How many threads llama.cpp gets: physical cores this process may run on, not logical CPUs.

llama.cpp's workers meet at a barrier after every matrix product and spin while they wait. A
thread per logical CPU (what `os.cpu_count()` gives) puts two spinning workers on one core's
hyper-threads, and a viewer running beside huatuo takes a core from a worker that the others then
wait for, at every barrier: measured decode fell 60x on a loaded 2-core machine (docs/cpu.md).
So the default is one thread per physical core in the affinity mask, and workers are told to
sleep rather than spin while they wait (`OMP_WAIT_POLICY=PASSIVE`, set before llama.cpp loads).
"""

from __future__ import annotations

import os
from pathlib import Path

#: environment for the OpenMP runtime llama.cpp is built with; set only if the user has not
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


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
    """Threads for prefill and decode: one per physical core this process may use."""
    return physical_cores()


def apply_openmp_defaults() -> None:
    """Before llama.cpp's library loads: idle workers sleep instead of spinning (user's value wins)."""
    for key, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)
