"""Posterior samples: refusion.sample_posterior (K samples as network batches) against K separate
refusion.sample calls, time per sample and peak RSS, each variant in a fresh process.

The network is the quickstart-size ConditionalNAFNet (w16, random weights: the cost of a forward does
not depend on the weights). Every variant draws the same K samples (generator k for sample k), and
the result records how far the samples of each variant are from the separate calls' samples.
"""
from __future__ import annotations

import statistics
import time

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import GIB, build_network, print_table, smooth_image

THIS_MODULE = "refusion.benchmarks.posterior"
NETWORK = "ConditionalNAFNet-w16-quickstart"


def posterior_run(size: int, num_samples: int, steps: int, mode: str, chunk_size: int | None = None,
                  repeats: int = 1) -> dict:
    """Subprocess body: K samples of one size x size image, by K ``sample`` calls (mode "separate")
    or one ``sample_posterior`` call (mode "posterior"); the median seconds of ``repeats`` runs and a
    per-sample digest."""
    import refusion

    net, _ = build_network(NETWORK, True)
    net.eval()
    lq = smooth_image(size, size)
    generators = [torch.Generator().manual_seed(k) for k in range(num_samples)]
    kw = dict(model=net, steps=steps, sampler="mr_sde", progress=False)
    # the first network call of a process pays a one-off start-up (seconds): not part of either variant
    refusion.sample(smooth_image(32, 32), generator=torch.Generator().manual_seed(0), **{**kw, "steps": 1})

    def run() -> torch.Tensor:
        gens = [torch.Generator().manual_seed(g.initial_seed()) for g in generators]
        if mode == "separate":
            return torch.stack([refusion.sample(lq, generator=g, **kw) for g in gens])
        return refusion.sample_posterior(lq, num_samples=num_samples, generator=gens, chunk_size=chunk_size,
                                         **kw).samples

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        samples = run()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"seconds": seconds, "runs_s": times, "per_sample_s": seconds / num_samples,
            "sample_means": [float(s.double().mean()) for s in samples],
            "sample_std_over_k": float(samples.std(0, correction=0).mean())}


def _run(**kwargs) -> dict:
    threads = torch.get_num_threads()     # the parent's (--threads), for the child too
    # passive OpenMP waits: on a shared, busy CPU spinning threads cost every variant alike
    report = perf.run_with_peak_rss(f"{THIS_MODULE}:posterior_run", kwargs, threads=threads,
                                    env={"OMP_WAIT_POLICY": "PASSIVE"})
    return {**kwargs, **report["result"], "peak_rss_gib": report["peak_rss_bytes"] / GIB,
            "above_baseline_gib": (report["peak_rss_bytes"] - report["baseline_rss_bytes"]) / GIB}


def _compare(size: int, k: int, steps: int, repeats: int) -> dict:
    """One image size: one sample, K separate calls, sample_posterior with the automatic chunk and with
    all K samples in one batch."""
    from refusion.inference.sample_chunks import auto_chunk_size

    def _in_subprocess(**kwargs) -> dict:
        return _run(repeats=repeats, **kwargs)

    auto = auto_chunk_size(k, 1, size, size, None, "cpu")
    runs = {"one sample": _in_subprocess(size=size, num_samples=1, steps=steps, mode="separate"),
            f"{k} separate calls": _in_subprocess(size=size, num_samples=k, steps=steps, mode="separate"),
            f"posterior, chunk {auto} (auto)": _in_subprocess(size=size, num_samples=k, steps=steps,
                                                             mode="posterior")}
    for chunk in sorted({2, k} - {auto}):
        runs[f"posterior, chunk {chunk}"] = _in_subprocess(size=size, num_samples=k, steps=steps, mode="posterior",
                                                           chunk_size=chunk)
    one, separate = runs["one sample"], runs[f"{k} separate calls"]
    for run in runs.values():
        chunk = 1 if run["mode"] == "separate" else run.get("chunk_size") or auto
        run["chunk"] = chunk
        run["speedup_per_sample_vs_separate"] = separate["per_sample_s"] / run["per_sample_s"]
        # the goal: peak RSS within 1.5x of one sample's times the samples per network batch
        run["rss_vs_one_sample_x_chunk"] = run["peak_rss_gib"] / (one["peak_rss_gib"] * chunk)
        run["above_baseline_vs_one_sample_x_chunk"] = run["above_baseline_gib"] / (one["above_baseline_gib"] * chunk)
        if run["num_samples"] == k:
            run["max_mean_diff_vs_separate"] = max(abs(a - b) for a, b in zip(run["sample_means"],
                                                                               separate["sample_means"]))
    rows = [{"variant": name, "s/sample": run["per_sample_s"], "speedup": run["speedup_per_sample_vs_separate"],
             "peak RSS GiB": run["peak_rss_gib"], "above import GiB": run["above_baseline_gib"],
             "above import / (one x chunk)": run["above_baseline_vs_one_sample_x_chunk"]} for name, run in runs.items()]
    print_table(f"posterior samples: K={k}, {size}x{size}, {steps} mr_sde steps, {NETWORK} (each in a fresh "
                f"process)", rows, list(rows[0]))
    return {"image_size": size, "num_samples": k, "steps": steps, "auto_chunk": auto, "runs": runs}


def bench_posterior(state: dict) -> dict:
    # 256x256 is the target; at 128x128 a batch of samples still fits the CPU's caches
    sizes, k, steps = ((64,), 4, 2) if state["smoke"] else ((256, 128), 8, 5)
    return {"network": NETWORK, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(), "sizes": [_compare(size, k, steps, state["repeats"]) for size in sizes]}
