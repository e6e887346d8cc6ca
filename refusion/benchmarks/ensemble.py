"""x8 self-ensemble and colour fix: network calls and time against one plain run.

The self-ensemble should cost 8 network calls (8 per step for the SDE) and about 8 times the plain
time, no more: the flips, rotations and the average are memory copies next to a network forward.
The calls are counted with a forward pre-hook on the network; the times are medians of runs
interleaved with the plain ones (the ratio of the medians and of the fastest runs, which other
processes on a shared machine disturb least). The colour fixes are timed on the same image, against the plain
restoration they follow.
"""
from __future__ import annotations

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import build_network, print_table, smooth_image


def _counted(net: torch.nn.Module) -> list:
    calls: list = []
    net.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def _entry(name: str, run, calls: list, repeats: int) -> dict:
    """Calls of one plain and one ensemble run, and both timed side by side."""
    counts = {}
    for variant in ("plain", "ensemble"):
        calls.clear()
        run(variant == "ensemble")
        counts[variant] = len(calls)
    timings = perf.time_side_by_side({v: (lambda v=v: run(v == "ensemble")) for v in ("plain", "ensemble")},
                                     repeats=repeats, warmup=0)
    ratio = timings["ensemble"]["median_s"] / timings["plain"]["median_s"]
    # the fastest runs: the least disturbed by other processes on a shared machine
    ratio_min = timings["ensemble"]["min_s"] / timings["plain"]["min_s"]
    calls_ratio = counts["ensemble"] / counts["plain"]
    return {"network": name, "calls": counts, "call_ratio": calls_ratio,
            "plain_s": timings["plain"], "ensemble_s": timings["ensemble"], "time_ratio": ratio,
            "time_ratio_min": ratio_min,
            # time per network call relative to the plain run's: above 1 is the ensemble's own overhead
            "time_per_call_ratio": ratio / calls_ratio, "time_per_call_ratio_min": ratio_min / calls_ratio}


def bench_ensemble(state: dict) -> dict:
    import refusion
    from refusion.inference.color_fix import COLOR_FIXES, apply_color_fix
    from refusion.inference.pipeline import sde_sample
    from refusion.schedulers.ir_sde import IRSDEScheduler

    size = 64 if state["smoke"] else 256
    steps = 2 if state["smoke"] else 5
    repeats = max(2, state["repeats"])
    image = smooth_image(size, size)
    results, rows = {"image_size": size, "sde_steps": steps}, []

    regressor = "NAFNet-w32-GoPro"
    net, config = build_network(regressor, state["full"] or not state["smoke"])
    net.eval()
    calls = _counted(net)
    results["restore"] = _entry(f"{regressor} ({config})", lambda ensemble: refusion.restore(
        image, model=net, progress=False, self_ensemble=ensemble), calls, repeats)

    noise = "ConditionalNAFNet-w16-quickstart"
    unet, config = build_network(noise, True)
    unet.eval()
    calls = _counted(unet)

    def sample(ensemble: bool):
        with torch.inference_mode():
            return sde_sample(unet, IRSDEScheduler(sampler="mr_ode"), image, num_inference_steps=steps,
                              generator=torch.Generator().manual_seed(0), self_ensemble=ensemble)

    results["sample"] = _entry(f"{noise} ({config}), mr_ode", sample, calls, repeats)
    for what in ("restore", "sample"):
        r = results[what]
        rows.append({"call": what, "network": r["network"], "plain calls": r["calls"]["plain"],
                     "x8 calls": r["calls"]["ensemble"], "plain s": r["plain_s"]["median_s"],
                     "x8 s": r["ensemble_s"]["median_s"], "time ratio": r["time_ratio"],
                     "ratio of fastest": r["time_ratio_min"]})
    print_table(f"x8 self-ensemble, 1x3x{size}x{size}", rows, list(rows[0]))

    with torch.inference_mode():
        restored = refusion.restore(image, model=net, progress=False)
    fix_s = {m: perf.median_time(lambda m=m: apply_color_fix(restored, image, m), repeats=repeats)
             for m in COLOR_FIXES}
    plain_s = results["restore"]["plain_s"]["median_s"]
    results["color_fix_s"] = fix_s
    results["color_fix_percent_of_restore"] = {m: 100 * s / plain_s for m, s in fix_s.items()}
    print_table(f"colour fix, 1x3x{size}x{size}", [{"method": m, "ms": 1e3 * s, "% of restore": 100 * s / plain_s}
                                                   for m, s in fix_s.items()], ["method", "ms", "% of restore"])
    return results
