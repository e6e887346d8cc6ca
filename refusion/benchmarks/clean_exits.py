"""Exits of two-process `refusion restore` and `refusion evaluate` launches: how many of N end non-zero.

Each launch is `accelerate launch --multi_gpu --num_processes 2` of CPU processes (ACCELERATE_USE_CPU,
gloo), as the tests start them, on a tiny saved regressor (a width-8 NAFNet, random weights) and four
32x32 images, so that each process restores and scores two of them through the commands' real path.
Restore and evaluate launches alternate (a busy spell of the shared machine hits both), each into a
fresh output folder. A launch counts as unclean when its exit status is not 0; the JSON keeps the
stderr tail of each, and also counts the launches whose stderr shows a C++ abort ("terminate called")
whatever their status. N is ``--launches`` (default 50 per command; 2 with --smoke). The launched
processes import the copy of the package this module belongs to. Ctrl-C stops it early with the
launches that finished (each command's "runs").
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from refusion.benchmarks.ports import free_port

LAUNCHES = 50
SMOKE_LAUNCHES = 2
LAUNCH_TIMEOUT_S = 300.0   # a launch that hangs counts as unclean instead of stopping the benchmark
TAIL_CHARS = 2000
ABORT = "terminate called"


def write_inputs(folder: Path) -> dict[str, Path]:
    """A saved regressor (what `restore --model` and `evaluate RUN` load) and GT / LQ folders of four images."""
    import numpy as np
    import torch
    import yaml

    from refusion.data.image_io import write_image
    from refusion.models import NAFNet

    torch.manual_seed(0)
    run = folder / "regressor"
    run.mkdir(parents=True)
    (run / "recipe.yml").write_text(yaml.safe_dump({"task": "regressor"}))
    NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).save_pretrained(run / "model")
    rng = np.random.default_rng(0)
    for i in range(4):
        gt = rng.random((32, 32, 3))   # LPIPS (AlexNet) needs at least 32x32
        write_image(folder / "gt" / f"img{i}.png", gt)
        write_image(folder / "lq" / f"img{i}.png", np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1))
    return {"run": run, "gt": folder / "gt", "lq": folder / "lq"}


def command_args(command: str, inputs: dict[str, Path], out: Path) -> list[str]:
    if command == "restore":
        return ["restore", str(inputs["lq"]), "-o", str(out), "--model", str(inputs["run"]), "--no-progress"]
    return ["evaluate", str(inputs["run"]), "--gt", str(inputs["gt"]), "--lq", str(inputs["lq"]),
            "--out", str(out), "--no-progress", "--no-reference"]


def launch(args: list[str], cwd: Path) -> dict:
    """One two-process CPU launch of `python -m refusion ARGS`: exit status, seconds, stderr."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "refusion", *args]
    # the launched processes run the same copy of the package as this benchmark, whatever the folder
    source = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", PYTHONPATH=path)
    start = time.perf_counter()
    try:
        done = subprocess.run(launcher, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
        status, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        status = "timeout"
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    return {"returncode": status, "seconds": time.perf_counter() - start, "stderr": stderr}


def stderr_tails(stderr: str) -> dict:
    """The end of what the processes wrote, and the end of the launcher's own report (torchrun's
    traceback and its table of failed ranks), which would otherwise fill the tail of a failed launch."""
    start = stderr.rfind("Traceback (most recent call last):")
    if start < 0 or "accelerate/commands/launch.py" not in stderr[start:]:
        return {"stderr_tail": stderr[-TAIL_CHARS:]}
    return {"stderr_tail": stderr[:start][-TAIL_CHARS:], "launcher_tail": stderr[start:][-TAIL_CHARS // 2:]}


def bench_clean_exits(state: dict) -> dict:
    launches = state.get("launches") or (SMOKE_LAUNCHES if state.get("smoke") else LAUNCHES)
    commands = ("restore", "evaluate")
    runs: dict[str, list[dict]] = {command: [] for command in commands}
    with tempfile.TemporaryDirectory(prefix="refusion-clean-exits-") as tmp:
        workdir = Path(tmp)
        inputs = write_inputs(workdir)
        try:
            for i in range(launches):
                for command in commands:
                    run = launch(command_args(command, inputs, workdir / f"{command}_{i}"), workdir)
                    runs[command].append(run)
                    if run["returncode"] != 0 or ABORT in run["stderr"]:
                        print(f"clean_exits: {command} launch {i + 1}: exit status {run['returncode']}", flush=True)
                if (i + 1) % 10 == 0 or i + 1 == launches:
                    print(f"clean_exits: {i + 1}/{launches} launches of each command; non-zero exits so far: "
                          + ", ".join(f"{c} {sum(r['returncode'] != 0 for r in runs[c])}" for c in commands),
                          flush=True)
        except KeyboardInterrupt:   # Ctrl-C: keep the launches that finished (the one under way is dropped)
            print("clean_exits: interrupted; reporting the launches that finished", flush=True)
    result: dict = {"launches": launches, "processes": 2, "model": "NAFNet w8 (random weights), 4 images 32x32"}
    for command, done in runs.items():
        unclean = [(i, r) for i, r in enumerate(done) if r["returncode"] != 0]
        result[command] = {
            "runs": len(done),
            "nonzero_exits": len(unclean),
            "aborts_in_stderr": sum(ABORT in r["stderr"] for r in done),
            "seconds_median": statistics.median(r["seconds"] for r in done),
            "failures": [{"launch": i, "returncode": r["returncode"], **stderr_tails(r["stderr"])} for i, r in unclean],
        }
    return result
