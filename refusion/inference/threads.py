"""CPU threads of torch: how many, and how OpenMP waits, so that a busy machine is shared well.

- :func:`allowed_cpus`: the CPUs this process may run on (its affinity mask: taskset, cgroup cpusets,
  Slurm and container limits narrow it; ``os.cpu_count()`` does not see them).
- :func:`default_threads`: the thread count every `refusion` command sets at its start: OMP_NUM_THREADS
  when set, else the allowed CPUs divided among the processes of one launch on this machine
  (LOCAL_WORLD_SIZE).
- :func:`openmp_environment`: the OpenMP variables the `refusion` command sets before torch loads
  (OpenMP reads them once, when torch is imported): ``OMP_WAIT_POLICY=PASSIVE`` unless the caller's
  environment already says something. docs/performance.md has the measurements behind this choice
  (``refusion benchmark contention``).
- :func:`load_aware_threads`: the alternative measured against it (fewer threads when the 1-minute
  load average says other processes keep CPUs busy); not the default.

Nothing here imports torch: the command calls these before it knows whether torch is needed.
"""
from __future__ import annotations

import os
from typing import Mapping

# set before torch loads unless the environment already has them: OpenMP threads sleep at once when they
# wait, instead of spinning on a core another process needs (the `contention` benchmark)
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def allowed_cpus() -> int:
    """CPUs this process may use: the affinity mask where the OS has one, else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """OMP_NUM_THREADS when the environment sets it (as torch itself does), else the allowed CPUs divided
    among the LOCAL_WORLD_SIZE processes that accelerate or torchrun started on this machine (at least 1)."""
    environ = os.environ if environ is None else environ
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    local = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, allowed_cpus() // max(1, local))


def load_aware_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Allowed CPUs minus the CPUs the 1-minute load average says are busy (at least 1).

    Measured, not the default: the load average lags a minute behind, counts every process of a
    container's host, and a count chosen at start stays after the other work ends.
    """
    cpus = allowed_cpus() if cpus is None else cpus
    load = os.getloadavg()[0] if load is None else load
    return max(1, min(cpus, cpus - round(load)))


def openmp_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OpenMP variables to set before torch loads: OPENMP_DEFAULTS less those already set."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in OPENMP_DEFAULTS.items() if name not in environ}
