"""CPU threads of torch: how many, and how OpenMP waits, so that a busy machine is shared well.

- :func:`allowed_cpus`: the CPUs this process may run on (its affinity mask: taskset, cgroup cpusets,
  Slurm and container limits narrow it; ``os.cpu_count()`` does not see them).
- :func:`cpu_budget`: the CPUs a command may use: OMP_NUM_THREADS when set; else, in a launch of several
  processes on this machine (LOCAL_WORLD_SIZE), the allowed CPUs divided among them; else the allowed CPUs.
- :func:`default_threads`: the thread count every `refusion` command sets at its start: the budget, less
  (when the budget was not given) the CPUs other processes keep busy right now (:func:`busy_cpus`), at
  least one. Threads of one parallel region wait for each other, so a thread on a taken CPU stalls all.
- :func:`image_workers`: how many images a CPU command restores at once, one thread each: workers share
  nothing, so they use the whole budget even when other processes keep CPUs busy.
- :func:`openmp_environment`: the OpenMP variables the `refusion` command sets before torch loads
  (OpenMP reads them once, when torch is imported): a short spin before a waiting thread sleeps
  (``GOMP_SPINCOUNT=10000`` instead of libgomp's 300000), unless the caller's environment sets
  OMP_WAIT_POLICY or GOMP_SPINCOUNT itself.
- :func:`load_aware_threads`: the 1-minute load average alternative, measured and not used.

docs/performance.md ("Threads on a shared machine") has the measurements behind these choices
(``refusion benchmark contention``). Nothing here imports torch.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Mapping

# set before torch loads unless the environment already says how OpenMP threads wait: spin briefly, then
# sleep, instead of spinning on a core another process needs (the `contention` benchmark: PASSIVE, no
# spin at all, cost 30-50% on an idle machine; this spin count about 5%)
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# images restored at once when the count is automatic: each holds a copy of the network and one image's
# activations; above LARGE_IMAGE_PIXELS an image gets every thread alone (6000x4000 on the latent path
# peaks at 3.6 GiB)
AUTO_WORKERS_MAX = 4
LARGE_IMAGE_PIXELS = 2048 * 2048


def allowed_cpus() -> int:
    """CPUs this process may use: the affinity mask where the OS has one, else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def cpu_budget(environ: Mapping[str, str] | None = None) -> tuple[int, bool]:
    """(CPUs this process may use, whether that count was given): OMP_NUM_THREADS when the environment
    sets it (as torch itself reads it), given; in a launch of several processes on this machine
    (LOCAL_WORLD_SIZE, set by accelerate / torchrun) the allowed CPUs divided among them, given; else
    the allowed CPUs, not given."""
    environ = os.environ if environ is None else environ
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given), True
    local = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:   # the other processes of the launch are busy starting up: share the CPUs evenly instead
        return max(1, allowed_cpus() // local), True
    return allowed_cpus(), False


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """:func:`cpu_budget`; when the budget was not given, less :func:`busy_cpus` (at least 1)."""
    cpus, given = cpu_budget(environ)
    if given:
        return cpus
    return max(1, cpus - min(cpus, round(busy_cpus())))


def image_workers(jobs: int, budget: int, *, largest_pixels: int, cpu: bool,
                  workers: int | None = None) -> tuple[int, int]:
    """(images restored at once, torch threads of each) for ``jobs`` independent images on ``budget`` CPUs.

    ``workers`` given: that many (at most ``jobs``), the budget divided among them. Else on the CPU, with
    at least two images and none over LARGE_IMAGE_PIXELS: one worker per CPU of the budget, at most
    AUTO_WORKERS_MAX, the budget divided among them; else one worker with the whole budget (a GPU is
    one device; a large image's activations would be held once per worker).

    Why: the threads of one image meet at a barrier after every operation, so one thread descheduled
    by another process stalls the image; images that each run on their own thread never wait for one
    another and take the CPUs' fair share (``refusion benchmark contention``: 2 workers next to a
    2-thread process keep about half the solo rate; one image on 2 threads a third).
    """
    budget = max(1, budget)
    if workers is None:
        small = largest_pixels <= LARGE_IMAGE_PIXELS
        workers = min(budget, AUTO_WORKERS_MAX) if cpu and small and jobs > 1 else 1
    workers = max(1, min(workers, jobs))
    return workers, max(1, budget // workers)


def busy_cpus(samples: int = 10, interval_s: float = 0.005) -> float:
    """CPUs other processes keep busy now: the runnable threads of the machine (procs_running in
    /proc/stat, this one excluded), median of ``samples`` reads ``interval_s`` apart; 0 where unknown.

    Unlike the load average it has no minute of lag and does not count this command's predecessors
    (a script running commands one after the other would otherwise slow itself down). It counts the
    whole machine: inside a container without its own /proc it sees the host's runnable threads.
    """
    counts = []
    for index in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                counts += [int(line.split()[1]) for line in stat if line.startswith("procs_running")]
        except (OSError, ValueError, IndexError):
            return 0.0
        if index + 1 < samples:
            time.sleep(interval_s)
    if not counts:
        return 0.0
    return max(0.0, statistics.median(counts) - 1)


def load_aware_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Allowed CPUs minus the CPUs the 1-minute load average says are busy (at least 1).

    Measured, not the default: the load average lags a minute behind, counts every process of a
    container's host, and a count chosen at start stays after the other work ends.
    """
    cpus = allowed_cpus() if cpus is None else cpus
    load = os.getloadavg()[0] if load is None else load
    return max(1, min(cpus, cpus - round(load)))


def openmp_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OpenMP variables to set before torch loads: OPENMP_DEFAULTS, unless the environment already
    says how OpenMP threads wait (OMP_WAIT_POLICY or GOMP_SPINCOUNT)."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in OPENMP_WAIT_VARIABLES):
        return {}
    return dict(OPENMP_DEFAULTS)
