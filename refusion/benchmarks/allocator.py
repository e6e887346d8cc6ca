"""glibc malloc left alone against ``refusion.inference.allocator.tune_malloc``, each case in fresh processes.

malloc settings are process-wide, so every (case, setting) pair runs in its own process
(``perf.run_with_peak_rss``), the pairs interleaved (plain, tuned, plain, tuned ...) so that load
from other processes hits both alike. Each process reports the median time of its timed calls, the
minor page faults per call and its peak RSS.
"""
from __future__ import annotations

import resource

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import GIB, build_network, make_train_step, network_inputs, print_table

THIS_MODULE = "refusion.benchmarks.allocator"


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(case: str, tuned: bool, size: int, repeats: int, threads: int | None) -> dict:
    """Subprocess body: time ``case`` with malloc tuned or not."""
    from refusion.inference.allocator import tune_malloc

    applied = tune_malloc() if tuned else False
    if threads:
        torch.set_num_threads(threads)
    if case == "train_step":
        net, _ = build_network("ConditionalNAFNet-w64-Refusion", True)
        g = torch.Generator().manual_seed(5)
        batch = {k: torch.rand(4, 3, size, size, generator=g) for k in ("gt", "lq")}
        step = make_train_step(net.train(), bf16=False)
        fn, warmup = (lambda: step(batch)), 3  # the heap settles over the first steps
        context = torch.enable_grad()
    else:
        name = {"nafnet": "NAFNet-w32-GoPro", "noise_w64": "ConditionalNAFNet-w64-Refusion"}[case]
        net, _ = build_network(name, True)
        net.eval().requires_grad_(False)
        x = network_inputs(name, size, channels_last=True)  # the pipeline's float32 layout
        fn, warmup = (lambda: net(*x)), 2
        context = torch.inference_mode()
    with context:
        for _ in range(warmup):
            fn()
        before = _faults()
        timing = perf.time_side_by_side({"fn": fn}, repeats=repeats, warmup=0)["fn"]
        faults = (_faults() - before) / repeats
    return {"applied": applied, "median_s": timing["median_s"], "runs_s": timing["runs_s"],
            "minor_faults_per_call": faults}


def bench_allocator(state: dict) -> dict:
    smoke = state["smoke"]
    cases = ([("nafnet", 64), ("train_step", 32)] if smoke else
             [("nafnet", 256), ("noise_w64", 256), ("nafnet", 1024), ("train_step", 128)])
    rounds = 1 if smoke or not state["full"] else 2
    repeats = 2 if smoke else max(3, state["repeats"])
    threads = torch.get_num_threads()
    results, rows = [], []
    for case, size in cases:
        runs = {False: [], True: []}
        for _ in range(rounds):
            for tuned in (False, True):
                report = perf.run_with_peak_rss(f"{THIS_MODULE}:measure", dict(
                    case=case, tuned=tuned, size=size, repeats=repeats, threads=threads))
                runs[tuned].append({**report["result"], "peak_rss_gib": report["peak_rss_bytes"] / GIB})
        entry = {"case": case, "size": size, "threads": threads, "plain": runs[False], "tuned": runs[True]}
        plain_s = min(r["median_s"] for r in runs[False])
        tuned_s = min(r["median_s"] for r in runs[True])
        entry["speedup"] = plain_s / tuned_s
        results.append(entry)
        rows.append({"case": case, "size": size, "plain s": plain_s, "tuned s": tuned_s, "x": entry["speedup"],
                     "faults plain": runs[False][-1]["minor_faults_per_call"],
                     "faults tuned": runs[True][-1]["minor_faults_per_call"],
                     "RSS plain GiB": max(r["peak_rss_gib"] for r in runs[False]),
                     "RSS tuned GiB": max(r["peak_rss_gib"] for r in runs[True])})
    print_table("glibc malloc: plain against tune_malloc (fresh process each; float32, channels_last inputs)",
                rows, list(rows[0]))
    return {"rounds": rounds, "cases": results}
