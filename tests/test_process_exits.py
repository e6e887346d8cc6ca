"""How the processes of a launched `refusion restore` end: together when the work is done, and the
whole launch with a failure, promptly, when one of them fails mid-folder.

The launch is tests/test_restore_distributed.py's (two CPU processes under `accelerate launch`, its
subprocess timeout turning a hang into a failure); the fault is injected by a wrapper script that
replaces the command's per-image function on process 1, as a crash in one process's share would.
The successful two-process runs (restore there, evaluate in tests/test_evaluate.py) also check that
no process aborts at exit.
"""
from __future__ import annotations

import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from refusion.benchmarks.clean_exits import ABORT, stderr_tails
from refusion.data.image_io import write_image
from refusion.inference.processes import end_processes
from test_multiprocess import TIMEOUT_S
from test_restore_cli import make_run
from test_restore_distributed import launch

FAILING_ON_PROCESS_1 = """
import os, sys
from refusion.cli import restore

real = restore.restore_job

def restore_job(model, sources, targets, **kwargs):
    if os.environ.get("RANK") == "1":
        raise KeyError(f"injected fault on process 1 at {sources[0].name}")   # not a per-image failure
    return real(model, sources, targets, **kwargs)

restore.restore_job = restore_job
sys.exit(restore.main())
"""


def test_ending_the_processes_of_a_plain_run_does_nothing():
    end_processes()
    end_processes()


def test_the_clean_exits_benchmark_keeps_the_processes_stderr_apart_from_the_launchers():
    processes = "[rank0]: restore: 4 of 4 images restored\n" + "terminate called without an active exception\n"
    launcher = ('Traceback (most recent call last):\n  File "/venv/accelerate/commands/launch.py", line 1\n'
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n" + "x" * 5000)
    tails = stderr_tails(processes + launcher)
    assert tails["stderr_tail"] == processes
    assert tails["launcher_tail"] == launcher[-len(tails["launcher_tail"]):] and ABORT not in tails["launcher_tail"]
    assert stderr_tails("a worker's own traceback") == {"stderr_tail": "a worker's own traceback"}


@pytest.mark.slow
def test_one_process_failing_mid_folder_ends_the_launch_with_a_failure(tmp_path):
    run = make_run(tmp_path / "nafnet", "regressor")
    rng = np.random.default_rng(0)
    for i in range(4):   # two images per process: process 0 restores both of its own
        write_image(tmp_path / "photos" / f"img{i}.png", rng.random((16, 16, 3)))
    script = tmp_path / "failing_restore.py"
    script.write_text(textwrap.dedent(FAILING_ON_PROCESS_1))
    out = tmp_path / "out"
    start = time.perf_counter()
    # process 0 finishes its share and waits to gather; it must not wait there for the failed one (a hang
    # fails with subprocess.TimeoutExpired)
    result = launch(str(script), str(tmp_path / "photos"), "-o", str(out), "--model", str(run), "--no-progress")
    seconds = time.perf_counter() - start
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-3000:]
    assert "KeyError: 'injected fault on process 1 at img2.png'" in text, text[-3000:]
    assert seconds < TIMEOUT_S
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]   # process 0's share, whole
