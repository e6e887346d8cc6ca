"""Start-up of the web app: seconds from `refusion app` starting to its first page, and the `--help` times.

A tiny saved SDE pipeline (a width-8 ConditionalNAFNet, 20 trained steps) is written to a temporary
folder; `refusion app --model <it> --port <free loopback port>` runs as a fresh process each repeat,
and the page is polled with urllib every 20 ms until it answers HTTP 200. The figure is the median over
``--repeats`` starts (smoke mode: one start). The command is the `refusion` console script next to this
Python (not a version manager's shim, which adds its own start-up), or `python -m refusion` without
one. `refusion --help` and `refusion app --help` are timed the same way (median of 3, or 1 in smoke
mode). The load average before and after is in the JSON's machine record: the cores may be shared.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from refusion.benchmarks.ports import free_port

PAGE_TIMEOUT_S = 120.0
POLL_S = 0.02


def refusion_command() -> list[str]:
    """The `refusion` console script of this Python, or `python -m refusion`."""
    script = Path(sys.executable).parent / "refusion"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "refusion"]


def save_tiny_model(folder: Path) -> Path:
    """A tiny saved RefusionPipeline (what `refusion app --model` loads for an SDE model)."""
    from refusion.inference.pipeline import RefusionPipeline
    from refusion.models.conditional_nafnet import ConditionalNAFNet
    from refusion.schedulers.ir_sde import IRSDEScheduler

    unet = ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    path = folder / "tiny_sde"
    RefusionPipeline(unet=unet, scheduler=IRSDEScheduler(num_train_timesteps=20)).save_pretrained(path)
    return path


def time_first_page(command: list[str], model: Path, workdir: Path) -> float:
    """Seconds from starting the app to the first HTTP 200 of its page; RuntimeError (with the log)
    when the app exits or does not answer within PAGE_TIMEOUT_S."""
    port = free_port()
    log_path = workdir / f"app_{port}.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([*command, "app", "--model", str(model), "--port", str(port), "--device", "cpu"],
                                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            return time.perf_counter() - start
                except OSError:
                    pass
                if time.perf_counter() - start > PAGE_TIMEOUT_S:
                    raise RuntimeError(f"no page within {PAGE_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-2000:]}")
                time.sleep(POLL_S)
        finally:
            stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the app's clean shutdown: its temporary folder removed), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_command(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def bench_app_start(state: dict) -> dict:
    from refusion.benchmarks import perf

    if importlib.util.find_spec("gradio") is None:
        return {"skipped": 'the web app needs Gradio: pip install -e ".[app]"'}
    repeats = 1 if state.get("smoke") else max(1, int(state.get("repeats", 3)))
    command = refusion_command()
    help_runs = 1 if state.get("smoke") else 3
    result: dict = {"command": command, "repeats": repeats, "load_average_start": perf.machine_info().get("load_average")}
    with tempfile.TemporaryDirectory(prefix="refusion-app-start-") as tmp:
        workdir = Path(tmp)
        model = save_tiny_model(workdir)
        pages = [time_first_page(command, model, workdir) for _ in range(repeats)]
    helps = {name: [time_command([*command, *args]) for _ in range(help_runs)]
             for name, args in (("refusion --help", ["--help"]), ("refusion app --help", ["app", "--help"]))}
    result["first_page_s"] = {"median": statistics.median(pages), "runs": pages}
    result["help_s"] = {name: {"median": statistics.median(runs), "runs": runs} for name, runs in helps.items()}
    result["load_average_end"] = perf.machine_info().get("load_average")
    print(f"app_start: first page {result['first_page_s']['median']:.2f} s (median of {repeats}); "
          + "; ".join(f"{name} {v['median']:.2f} s" for name, v in result["help_s"].items()), flush=True)
    return result
