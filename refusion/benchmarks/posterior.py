"""Posterior samples: refusion.sample_posterior (K samples as network batches) against K separate
refusion.sample calls: time per sample (variants interleaved in this process) and peak RSS (each
variant once in a fresh process).

The network is the quickstart-size ConditionalNAFNet (w16, random weights: the cost of a forward does
not depend on the weights). Every variant draws the same K samples (generator k for sample k), and
the result records how far the samples of each variant are from the separate calls' samples.
"""
from __future__ import annotations

import time

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import GIB, build_network, print_table, smooth_image

THIS_MODULE = "refusion.benchmarks.posterior"
NETWORK = "ConditionalNAFNet-w16-quickstart"


def posterior_run(size: int, num_samples: int, steps: int, mode: str, chunk_size: int | None = None) -> dict:
    """Subprocess body: K samples of one size x size image, by K ``sample`` calls (mode "separate")
    or one ``sample_posterior`` call (mode "posterior"); its seconds and a per-sample digest."""
    import refusion

    net, _ = build_network(NETWORK, True)
    net.eval()
    lq = smooth_image(size, size)
    generators = [torch.Generator().manual_seed(k) for k in range(num_samples)]
    kw = dict(model=net, steps=steps, sampler="mr_sde", progress=False)
    # the first network call of a process pays a one-off start-up (seconds): not part of either variant
    refusion.sample(smooth_image(32, 32), generator=torch.Generator().manual_seed(0), **{**kw, "steps": 1})
    start = time.perf_counter()
    if mode == "separate":
        samples = torch.stack([refusion.sample(lq, generator=g, **kw) for g in generators])
    else:
        samples = refusion.sample_posterior(lq, num_samples=num_samples, generator=generators, chunk_size=chunk_size,
                                            **kw).samples
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "per_sample_s": seconds / num_samples,
            "sample_means": [float(s.double().mean()) for s in samples],
            "sample_std_over_k": float(samples.std(0, correction=0).mean())}


def _run(**kwargs) -> dict:
    threads = torch.get_num_threads()     # the parent's (--threads), for the child too
    # passive OpenMP waits: on a shared, busy CPU spinning threads cost every variant alike
    report = perf.run_with_peak_rss(f"{THIS_MODULE}:posterior_run", kwargs, threads=threads,
                                    env={"OMP_WAIT_POLICY": "PASSIVE"})
    return {**kwargs, **report["result"], "peak_rss_gib": report["peak_rss_bytes"] / GIB,
            "above_baseline_gib": (report["peak_rss_bytes"] - report["baseline_rss_bytes"]) / GIB}


def _timings(size: int, k: int, steps: int, chunks: list[int], repeats: int) -> dict:
    """Seconds per sample of K separate calls and of sample_posterior at each chunk size, timed in this
    process with the variants interleaved (a busy spell of the shared machine hits them all)."""
    import refusion

    net, _ = build_network(NETWORK, True)
    net.eval()
    lq = smooth_image(size, size)
    kw = dict(model=net, steps=steps, sampler="mr_sde", progress=False)

    def gens():
        return [torch.Generator().manual_seed(i) for i in range(k)]

    fns = {"separate": lambda: [refusion.sample(lq, generator=g, **kw) for g in gens()]}
    for chunk in chunks:
        fns[f"chunk {chunk}"] = (lambda chunk=chunk: refusion.sample_posterior(lq, num_samples=k, generator=gens(),
                                                                               chunk_size=chunk, **kw))
    timed = perf.time_side_by_side(fns, repeats=repeats, warmup=1)
    return {name: {**t, "per_sample_s": t["median_s"] / k} for name, t in timed.items()}


def _compare(size: int, k: int, steps: int, repeats: int) -> dict:
    """One image size: time per sample (interleaved, this process) and peak RSS (a fresh process per
    variant) of K separate calls and of sample_posterior with the automatic chunk, 2 and K."""
    from refusion.inference.sample_chunks import auto_chunk_size

    auto = auto_chunk_size(k, 1, size, size, None, "cpu")
    chunks = sorted({auto, 2, k})
    times = _timings(size, k, steps, chunks, repeats)
    memory = {"one sample": _run(size=size, num_samples=1, steps=steps, mode="separate"),
              "separate": _run(size=size, num_samples=k, steps=steps, mode="separate")}
    for chunk in chunks:
        memory[f"chunk {chunk}"] = _run(size=size, num_samples=k, steps=steps, mode="posterior", chunk_size=chunk)
    one, separate = memory["one sample"], memory["separate"]
    rows, runs = [], {}
    for name, run in memory.items():
        chunk = int(name.split()[1]) if name.startswith("chunk") else 1
        entry = {"chunk": chunk, "auto": name == f"chunk {auto}", "peak_rss_gib": run["peak_rss_gib"],
                 "above_baseline_gib": run["above_baseline_gib"],
                 # the goal: peak RSS within 1.5x of one sample's times the samples per network batch
                 "rss_vs_one_sample_x_chunk": run["peak_rss_gib"] / (one["peak_rss_gib"] * chunk),
                 "above_baseline_vs_one_sample_x_chunk":
                     run["above_baseline_gib"] / (one["above_baseline_gib"] * chunk),
                 "fresh_process_s": run["seconds"]}
        if name in times:
            entry.update(per_sample_s=times[name]["per_sample_s"], runs_s=times[name]["runs_s"],
                         speedup_per_sample_vs_separate=times["separate"]["per_sample_s"] / times[name]["per_sample_s"])
        if run["num_samples"] == k:
            entry["max_mean_diff_vs_separate"] = max(abs(a - b) for a, b in zip(run["sample_means"],
                                                                                 separate["sample_means"]))
        runs[name] = entry
        rows.append({"variant": name + (" (auto)" if entry["auto"] else ""), "s/sample": entry.get("per_sample_s"),
                     "speedup": entry.get("speedup_per_sample_vs_separate"), "peak RSS GiB": entry["peak_rss_gib"],
                     "above import GiB": entry["above_baseline_gib"],
                     "above import / (one x chunk)": entry["above_baseline_vs_one_sample_x_chunk"]})
    print_table(f"posterior samples: K={k}, {size}x{size}, {steps} mr_sde steps, {NETWORK} (time: interleaved "
                f"medians; memory: a fresh process each)", rows, list(rows[0]))
    return {"image_size": size, "num_samples": k, "steps": steps, "auto_chunk": auto, "runs": runs}


def bench_posterior(state: dict) -> dict:
    # 256x256 is the target; at 128x128 a batch of samples still fits the CPU's caches
    sizes, k, steps = ((64,), 4, 2) if state["smoke"] else ((256, 128), 8, 5)
    return {"network": NETWORK, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "sizes": [_compare(size, k, steps, state["repeats"]) for size in sizes]}
