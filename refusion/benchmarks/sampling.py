"""Scheduler overhead per step and whole sampling runs (fp32 against the half-precision paths)."""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from refusion.benchmarks import perf
from refusion.benchmarks.common import build_network, network_inputs, print_table, psnr_db

SAMPLING_VARIANTS = ("fp32", "bf16_autocast", "half")
VARIANT_DOC = {"fp32": "float32 network", "bf16_autocast": "half=True before: the network under torch.autocast "
               "(weights re-cast at every call)", "half": "half=True: bf16 channels_last weights cast once per call"}


def autocast_only(net):
    """``net`` as a plain callable: with half=True the pipeline then runs it under autocast, the
    pipeline's half path before the bf16 channels_last weights (kept to measure against)."""
    return lambda *args, **kwargs: net(*args, **kwargs)


class _OpCounter(TorchDispatchMode):
    """Counts aten ops; ``_local_scalar_dense`` is a host read (a device sync on GPUs)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def bench_scheduler(state: dict) -> dict:
    from refusion.schedulers.ir_sde import IRSDEScheduler

    size = 64 if state["smoke"] else 256
    steps = 20
    mu = torch.rand(1, 3, size, size)
    noise_pred = torch.randn(1, 3, size, size)
    per_sampler, host_reads = {}, {}
    for sampler in IRSDEScheduler.SAMPLERS:
        sched = IRSDEScheduler(sampler=sampler)
        sched.set_timesteps(steps)
        timesteps = [int(t) for t in sched.timesteps]

        def run_loop(sched=sched, timesteps=timesteps):
            x = mu + 0.1
            for t in timesteps:
                x = sched.step(noise_pred, t, x, mu=mu, generator=torch.Generator().manual_seed(0)).prev_sample
            return x

        per_sampler[sampler] = perf.median_time(run_loop, repeats=max(3, state["repeats"])) / steps
        counter = _OpCounter()
        with counter:
            run_loop()
        host_reads[sampler] = counter.counts.get("aten._local_scalar_dense", 0) / steps
    network_s = {}
    for name in ("ConditionalNAFNet-w16-quickstart",) + (() if state["smoke"] else ("ConditionalNAFNet-w64-Refusion",)):
        net, _ = build_network(name, True)
        net.eval()
        x = network_inputs(name, size)
        with torch.inference_mode():
            network_s[name] = perf.median_time(lambda: net(*x), repeats=3)
    rows = [{"sampler": s, "step ms": 1e3 * t, "host reads/step": host_reads[s],
             **{f"% of {n.split('-')[1]}": 100 * t / network_s[n] for n in network_s}} for s, t in per_sampler.items()]
    print_table(f"scheduler step vs network forward, 1x3x{size}x{size}", rows, list(rows[0]))
    return {"image_size": size, "step_s": per_sampler, "host_reads_per_step": host_reads,
            "network_forward_s": network_s,
            "percent_of_network": {n: {s: 100 * t / ns for s, t in per_sampler.items()} for n, ns in network_s.items()}}


def bench_sampling(state: dict) -> dict:
    import refusion
    from refusion.schedulers.ir_sde import IRSDEScheduler

    size = 64 if state["smoke"] else 256
    step_counts = [100, 50, 20, 10, 5] if state["full"] else [20, 10, 5] if not state["smoke"] else [5]
    if state["run"]:
        pipe = refusion.load_pipeline(state["run"])
        net, scheduler, source = pipe.unet, pipe.scheduler, f"trained run {state['run']}"
    else:
        net, _ = build_network("ConditionalNAFNet-w16-quickstart", True)
        scheduler, source = IRSDEScheduler(), "untrained ConditionalNAFNet w16 [1,1,1] (quickstart size)"
    net.eval()
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    results, rows = {}, []
    for steps in step_counts:
        def run(variant: str, steps=steps):
            model = autocast_only(net) if variant == "bf16_autocast" else net
            return refusion.sample(lq, steps=steps, model=model, scheduler=scheduler, progress=False,
                                   half=variant != "fp32", generator=torch.Generator().manual_seed(0))
        timings = perf.time_side_by_side({v: (lambda v=v: run(v)) for v in SAMPLING_VARIANTS},
                                         repeats=max(2, state["repeats"] - 2), warmup=0)
        entry = {k: {**t, "per_step_s": t["median_s"] / steps} for k, t in timings.items()}
        reference = run("fp32")
        for variant in SAMPLING_VARIANTS[1:]:
            entry[variant]["psnr_vs_fp32_db"] = psnr_db(run(variant), reference, data_range=1.0)
        results[steps] = entry
        rows.append({"steps": steps, "fp32 s/image": entry["fp32"]["median_s"],
                     "bf16 autocast s": entry["bf16_autocast"]["median_s"],
                     "half (bf16 cl weights) s": entry["half"]["median_s"],
                     "autocast PSNR": entry["bf16_autocast"]["psnr_vs_fp32_db"],
                     "half PSNR": entry["half"]["psnr_vs_fp32_db"]})
    print_table(f"sampling one {size}x{size} image ({source})", rows, list(rows[0]))
    return {"image_size": size, "model": source, "variants": VARIANT_DOC, "steps": results}
