"""busy_cpus and the default thread count against a fake /proc/stat with known runnable-thread counts.

busy_cpus (refusion/inference/threads.py) is defined as the runnable threads of the machine
(``procs_running`` in /proc/stat) less the one reading it, the median of ``samples`` reads, and 0
where /proc/stat cannot be read. The machine's real counts change from one moment to the next, so the
file is replaced here by one whose counts are chosen, and every expected value follows from the
definition.
"""
from __future__ import annotations

import io
import os

import pytest

from refusion.inference import threads


def proc_stat(procs_running: int) -> str:
    return ("cpu  4705 356 584 3699 23 23 0 0 0 0\ncpu0 1393 280 278 1054 8 12 0 0 0 0\n"
            "intr 114930548 113199788 3 0 5 263 0 4 [...]\nctxt 1990473\nbtime 1062191376\n"
            f"processes 2915\nprocs_running {procs_running}\nprocs_blocked 0\n")


@pytest.fixture
def fake_proc_stat(monkeypatch):
    """Serve /proc/stat with the given procs_running counts, one per read; returns the paths read."""
    opened = []

    def serve(*counts: int):
        reads = iter(counts)

        def fake_open(path, *args, **kwargs):
            opened.append(path)
            return io.StringIO(proc_stat(next(reads)))

        monkeypatch.setattr(threads, "open", fake_open, raising=False)   # shadows the builtin in the module
        return opened

    return serve


def test_busy_cpus_is_the_median_runnable_count_less_the_caller(fake_proc_stat):
    # the caller is runnable while it reads /proc/stat: it counts itself once, and is no other process
    opened = fake_proc_stat(4, 9, 5, 1, 5)
    assert threads.busy_cpus(samples=5, interval_s=0) == 4        # median 5 (not the mean 4.8), less 1
    assert opened == ["/proc/stat"] * 5


def test_an_idle_machine_has_no_busy_cpus(fake_proc_stat):
    fake_proc_stat(1, 1, 1)                                        # only the caller runs
    assert threads.busy_cpus(samples=3, interval_s=0) == 0


def test_an_unreadable_proc_stat_counts_as_no_busy_cpus(monkeypatch):
    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", path)   # macOS, Windows

    monkeypatch.setattr(threads, "open", no_proc, raising=False)
    assert threads.busy_cpus(samples=3, interval_s=0) == 0


def test_default_threads_leave_the_cpus_other_processes_keep_busy(monkeypatch, fake_proc_stat):
    # 8 CPUs allowed, no count given: 8 less busy_cpus read from /proc/stat (3 others runnable -> 5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    environ = {}
    assert threads.cpu_budget(environ) == (8, False)
    fake_proc_stat(*[4] * 10)
    assert threads.default_threads(environ) == 5
    fake_proc_stat(*[30] * 10)                                     # more busy than allowed: still one
    assert threads.default_threads(environ) == 1


def test_a_given_budget_is_not_reduced_by_busy_cpus(monkeypatch, fake_proc_stat):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    fake_proc_stat(*[6] * 10)
    assert threads.cpu_budget({"OMP_NUM_THREADS": "3"}) == (3, True)
    assert threads.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert threads.cpu_budget({"LOCAL_WORLD_SIZE": "3"}) == (2, True)     # 8 CPUs among 3 processes: 2 each
    assert threads.default_threads({"LOCAL_WORLD_SIZE": "3"}) == 2
