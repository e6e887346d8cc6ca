"""Sharing a busy machine: throughput alone and next to a competing CPU process, for each thread setting.

Three workloads of a small network, each timed for a fixed window in a fresh process (OpenMP reads its
environment once, when torch loads): a training step of the quickstart noise network (batch 4x3x64x64,
Lion), ``refusion.restore`` of a 256x256 image with a width-16 NAFNet, and the same restore of a
folder of such images the way `refusion restore` runs one (``restore_folder``: its worker choice and
pool, refusion.inference.workers, images in memory; only ``new_default`` restores several images at
once, the other settings restore one after the other). Each thread setting runs them alone, then
again while another Python process runs a 2-thread float32 matrix-multiply loop
(torch's default OpenMP policy, as an unrelated job would). The figure of merit is the throughput
next to the competitor over the throughput of torch's old default alone (2 threads, spinning
OpenMP) on the same machine in the same run: 50% is a fair share of two equal jobs.

Settings: ``old_default`` (torch's own thread count, OpenMP's default policy), ``new_default``
(what `refusion` commands do now, refusion.inference.threads: the allowed CPUs less those busy at
start, ``GOMP_SPINCOUNT=10000``), ``passive`` (all allowed CPUs, ``OMP_WAIT_POLICY=PASSIVE``),
``one_thread``, ``short_spin`` (all allowed CPUs, ``GOMP_SPINCOUNT=10000``), ``load_aware`` (threads
from the 1-minute load average at start, OpenMP's default policy). The solo and contended runs of all
settings alternate (``--repeats`` rounds), so slow drifts of other load hit every setting alike.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from refusion.benchmarks import perf
from refusion.benchmarks.common import print_table
from refusion.inference import threads as thread_policy

COMPETITOR = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nb = torch.randn(1024, 1024)\n"
              "while True:\n    torch.mm(a, b)\n")
WORKLOADS = ("train_step", "restore", "restore_folder")
# setting -> (torch threads: an int, "torch" for torch's own default, "load" for load_aware_threads; env)
SETTINGS = {
    "old_default": ("torch", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
    "new_default": ("default", "new"),
    "passive": ("allowed", {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),
    "one_thread": (1, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
    "short_spin": ("allowed", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    "load_aware": ("load", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
}


def throughput_probe(threads, seconds: float) -> dict:
    """Subprocess body: training steps, and images restored, per second over ``seconds`` each."""
    import torch

    import refusion
    from refusion.benchmarks.common import build_network, make_train_step
    from refusion.models import NAFNet

    automatic = threads == "default"   # restore_folder: the command's own worker choice
    if threads == "load":
        torch.set_num_threads(thread_policy.load_aware_threads())
    elif threads == "default":
        torch.set_num_threads(thread_policy.default_threads())
    elif threads == "allowed":
        torch.set_num_threads(thread_policy.allowed_cpus())
    elif threads != "torch":
        torch.set_num_threads(int(threads))
    net, _ = build_network("ConditionalNAFNet-w16-quickstart", True, seed=0)
    step = make_train_step(net.train(), False)
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(4, 3, 64, 64, generator=g) for k in ("gt", "lq")}
    torch.manual_seed(0)
    regressor = perf.activate_skip_gains(NAFNet(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1,
                                                dec_blk_nums=[1, 1, 1]), 0.1).eval()
    image = torch.rand(1, 3, 256, 256, generator=g)

    def rate(fn, images: int = 1) -> float:
        fn()   # warm-up: allocations, oneDNN kernels
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            calls += 1
        return calls * images / (time.perf_counter() - start)

    threads = torch.get_num_threads()
    rates = {"train_step": rate(lambda: step(batch)),
             "restore": rate(lambda: refusion.restore(image, model=regressor, progress=False))}
    folder, images, workers = folder_restore(regressor, image, automatic=automatic)
    rates["restore_folder"] = rate(folder, images)
    return {"threads": threads, "folder_workers": workers, "load_average_at_start": os.getloadavg()[0],
            "per_s": rates, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}


def folder_restore(regressor, image, *, automatic: bool):
    """(restore a batch of images, their number, workers): `refusion restore`'s worker pool over
    in-memory images, with its automatic worker choice (``automatic``) or one worker."""
    import refusion
    from refusion.inference.workers import map_workers, worker_models

    pixels = image.shape[-2] * image.shape[-1]
    models, threads = worker_models(regressor, jobs=8, largest_pixels=pixels, workers=None if automatic else 1,
                                    cpu=True)
    batch = [image] * (2 * len(models))

    def restore(model, lq):
        return refusion.restore(lq, model=model, progress=False)
    return lambda: map_workers(restore, batch, models, threads=threads), len(batch), len(models)


def _environment(name: str) -> dict:
    threads, env = SETTINGS[name]
    if env == "new":   # exactly what the `refusion` command sets, computed from a clean environment
        clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
        env = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, **thread_policy.openmp_environment(clean)}
    return {**env, "OMP_NUM_THREADS": None}


def _probe(name: str, seconds: float) -> dict:
    threads, _ = SETTINGS[name]
    report = perf.run_with_peak_rss("refusion.benchmarks.contention:throughput_probe",
                                    {"threads": threads, "seconds": seconds}, env=_environment(name), timeout=600)
    return report["result"]


def _competitor() -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(2.0)   # torch imported, the loop running
    if proc.poll() is not None:
        raise RuntimeError(f"the competing process exited at once (status {proc.returncode})")
    return proc


def bench_contention(state: dict) -> dict:
    seconds = 1.0 if state["smoke"] else 4.0
    rounds = 1 if state["smoke"] else max(1, state["repeats"] - 1)
    names = list(SETTINGS)
    runs = {name: {"solo": [], "contended": []} for name in names}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name in names:
            runs[name]["solo"].append(_probe(name, seconds))
        competitor = _competitor()
        try:
            for name in names:
                runs[name]["contended"].append(_probe(name, seconds))
        finally:
            competitor.kill()
            competitor.wait()
        loads.append(os.getloadavg()[0])
    result = {"seconds_per_window": seconds, "rounds": rounds, "allowed_cpus": thread_policy.allowed_cpus(),
              "competitor": "python, torch 2 threads, 1024^3 float32 matmul loop, default OpenMP policy",
              "load_average_1min_between_rounds": loads, "settings": {}}
    old_solo = {w: _median(r["per_s"][w] for r in runs["old_default"]["solo"]) for w in WORKLOADS}
    rows = []
    for name in names:
        entry = {"threads_solo": runs[name]["solo"][-1]["threads"],
                 "threads_contended": runs[name]["contended"][-1]["threads"],
                 "folder_workers": runs[name]["solo"][-1]["folder_workers"],
                 "environment": {k: v for k, v in _environment(name).items() if v is not None}, "workloads": {},
                 "per_round_per_s": {cond: [r["per_s"] for r in runs[name][cond]] for cond in ("solo", "contended")},
                 "load_average_at_start": {cond: [round(r["load_average_at_start"], 2) for r in runs[name][cond]]
                                           for cond in ("solo", "contended")}}
        for work in WORKLOADS:
            solo = _median(r["per_s"][work] for r in runs[name]["solo"])
            contended = _median(r["per_s"][work] for r in runs[name]["contended"])
            entry["workloads"][work] = {
                "solo_per_s": solo, "contended_per_s": contended,
                "contended_over_own_solo": contended / solo,
                "contended_over_old_default_solo": contended / old_solo[work],
                "solo_over_old_default_solo": solo / old_solo[work]}
            rows.append({"setting": name, "workload": work, "threads solo/busy":
                         f"{entry['threads_solo']}/{entry['threads_contended']}", "solo /s": solo,
                         "busy /s": contended, "busy / old solo": contended / old_solo[work],
                         "solo / old solo": solo / old_solo[work]})
        result["settings"][name] = entry
    print_table(f"contention: alone and next to a 2-thread matmul process ({thread_policy.allowed_cpus()} allowed CPUs, "
                f"load {loads})", rows, list(rows[0]))
    return result


def _median(values) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
