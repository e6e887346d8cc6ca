"""Training step, fp32 against bf16 loss curves, the data loader's rate, and OpenMP threading."""
from __future__ import annotations

import time

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import MIB, build_network, make_train_step, network_inputs, print_table, synthetic_pairs

THIS_MODULE = "refusion.benchmarks.training"
MEMORY_STEPS = 3    # training steps of a memory probe: the first allocates gradients and Lion's momentum

# (variant, channels_last images, torch.compile, bf16 autocast): fp32 is the step before train.channels_last
TRAIN_VARIANTS = (("fp32", False, False, False), ("channels_last", True, False, False),
                  ("compile", False, True, False), ("channels_last+compile", True, True, False),
                  ("bf16_autocast", False, False, True), ("channels_last+bf16", True, False, True))


def _variants(state: dict) -> list[tuple]:
    """The variants this machine can run meaningfully: bf16 only where it is native (on a CPU without it
    the engine refuses mixed_precision bf16), compile only where inductor has a C++ compiler."""
    import shutil

    from refusion.inference.capability import native_bf16

    native = native_bf16(torch.device("cpu"))
    compiler = shutil.which("g++") or shutil.which("c++")
    return [v for v in TRAIN_VARIANTS if (native or not v[3]) and (compiler or not v[2])]


def _layout(batch: dict, channels_last: bool) -> dict:
    return {k: v.contiguous(memory_format=torch.channels_last) if channels_last else v for k, v in batch.items()}


def bench_train_step(state: dict) -> dict:
    """Seconds per training step of each variant (the first step apart: it pays the compile), side by
    side, for the quickstart network and the Refusion-size one at a reduced batch; then each variant's peak
    resident memory, in a process of its own; and the loss curves."""
    smoke = state["smoke"]
    setups = [("ConditionalNAFNet-w16-quickstart", 2, 32)] if smoke else [
        ("ConditionalNAFNet-w16-quickstart", 4, 64), ("ConditionalNAFNet-w64-Refusion", 2, 128)]
    result = {"optimizer": "lion", "networks": {}}
    for name, batch_size, crop in setups:
        # compiling the 28-block network takes many minutes on a small CPU: --full only
        variants = [v for v in _variants(state) if not (v[2] and "Refusion" in name and not state["full"])]
        g = torch.Generator().manual_seed(5)
        batch = {k: torch.rand(batch_size, 3, crop, crop, generator=g) for k in ("gt", "lq")}
        steps, first = {}, {}
        for variant, channels_last, compiled, bf16 in variants:
            net, _ = build_network(name, True)
            if compiled:
                net.compile()
            step, data = make_train_step(net.train(), bf16), _layout(batch, channels_last)
            start = time.perf_counter()
            step(data)                                        # the first step: compile, allocator
            first[variant] = time.perf_counter() - start
            steps[variant] = (lambda step=step, data=data: step(data))
        timings = perf.time_side_by_side(steps, repeats=max(2, state["repeats"] - 2), warmup=0)
        memory = peak_memory(name, batch_size, crop, variants)
        base = timings["fp32"]["median_s"]
        rows = [{"variant": k, "step s": t["median_s"], "vs fp32": base / t["median_s"], "first step s": first[k],
                 "peak RSS MiB": memory[k]["peak_rss_mib"], "step +MiB": memory[k]["step_rss_increase_mib"]}
                for k, t in timings.items()]
        print_table(f"train step {name}, batch {batch_size}x3x{crop}x{crop}, Lion", rows, list(rows[0]))
        result["networks"][name] = {"batch": [batch_size, 3, crop, crop], "variants": timings,
                                    "first_step_s": first, "speedup_vs_fp32": {r["variant"]: r["vs fp32"] for r in rows},
                                    "memory": memory}
    result["loss_curves"] = _loss_curves(state)
    return result


def train_step_memory(name: str, batch_size: int, crop: int, channels_last: bool, compiled: bool, bf16: bool,
                      malloc_tuned: bool, steps: int = MEMORY_STEPS) -> dict:
    """Subprocess body: the network and batch of a variant as bench_train_step builds them, then ``steps``
    training steps; returns the peak RSS before the first step (the caller's report adds the peak after)."""
    from refusion.inference.allocator import tune_malloc

    if malloc_tuned:        # as the benchmarking process and the training engine have it
        tune_malloc()
    net, _ = build_network(name, True)
    if compiled:
        net.compile()
    g = torch.Generator().manual_seed(5)
    batch = _layout({k: torch.rand(batch_size, 3, crop, crop, generator=g) for k in ("gt", "lq")}, channels_last)
    step = make_train_step(net.train(), bf16)
    before = perf.peak_rss_bytes()
    for _ in range(steps):
        step(batch)
    return {"pre_step_peak_rss_bytes": before, "steps": steps}


def peak_memory(name: str, batch_size: int, crop: int, variants: list[tuple]) -> dict:
    """Peak resident memory of each variant's training steps, each variant in a fresh process: a process's
    peak only grows, so variants sharing one would hide each other's. In MiB: the peak after importing
    torch and refusion, the peak before the first step (network, batch, optimizer), the peak after
    MEMORY_STEPS steps, and the steps' increase over the pre-step peak (activations, gradients, optimizer
    state, and under compile what inductor holds while it compiles in that process)."""
    from refusion.inference.allocator import malloc_tuned

    memory = {}
    for variant, channels_last, compiled, bf16 in variants:
        report = perf.run_with_peak_rss(f"{THIS_MODULE}:train_step_memory", dict(
            name=name, batch_size=batch_size, crop=crop, channels_last=channels_last, compiled=compiled,
            bf16=bf16, malloc_tuned=malloc_tuned()), threads=torch.get_num_threads())
        pre_step, peak = report["result"]["pre_step_peak_rss_bytes"], report["peak_rss_bytes"]
        memory[variant] = {"peak_rss_mib": peak / MIB, "pre_step_peak_rss_mib": pre_step / MIB,
                           "step_rss_increase_mib": (peak - pre_step) / MIB,
                           "import_peak_rss_mib": report["baseline_rss_bytes"] / MIB,
                           "steps": report["result"]["steps"], "process_wall_s": report["wall_s"]}
    return memory


def _loss_curves(state: dict) -> dict:
    """The quickstart SDE objective trained from the same seed as today's fp32 step, with channels_last
    images (the new default), and with bf16 autocast where it is native: the curves must agree."""
    from refusion.data.paired import PairedImageDataset
    from refusion.inference.capability import native_bf16

    iters = 20 if state["smoke"] else 600 if state["full"] else 200
    root = synthetic_pairs(128, 24)
    dataset = PairedImageDataset(root / "train" / "gt", root / "train" / "lq", gt_size=64, use_flip=True,
                                 use_rot=True, seed=0)
    variants = [("fp32", False, False), ("channels_last", True, False)]
    variants += [("bf16_autocast", False, True)] if native_bf16(torch.device("cpu")) else []
    curves = {}
    for variant, channels_last, bf16 in variants:
        net, _ = build_network("ConditionalNAFNet-w16-quickstart", True, seed=0)
        step = make_train_step(net.train(), bf16, lr=3e-4)
        torch.manual_seed(0)  # same timesteps and noise in every run
        losses = []
        for i in range(iters):
            items = [dataset[(4 * i + j) % len(dataset)] for j in range(4)]
            losses.append(step(_layout({k: torch.stack([it[k] for it in items]) for k in ("gt", "lq")}, channels_last)))
        curves[variant] = losses
    window = max(1, iters // 10)
    smooth = {k: [sum(v[i:i + window]) / window for i in range(0, iters - window + 1, window)] for k, v in curves.items()}
    gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(smooth["fp32"], smooth["channels_last"]))
    return {"iterations": iters, "batch": [4, 3, 64, 64], "window": window, "mean_loss_per_window": smooth,
            "channels_last_vs_fp32_max_relative_window_gap": gap, "raw": curves}


def bench_dataloader(state: dict) -> dict:
    from refusion.data.paired import PairedImageDataset
    from refusion.training.data_stream import stream_loader

    crop, batch_size = (64, 4) if state["smoke"] else (256, 8)
    root = synthetic_pairs(crop + 32, 8 if state["smoke"] else 24)
    dataset = PairedImageDataset(root / "train" / "gt", root / "train" / "lq", gt_size=crop, use_flip=True, use_rot=True)
    n_batches = 5 if state["smoke"] else 40
    rates = {}
    for workers in (0, 2):
        loader = iter(stream_loader(dataset, seed=0, start=0, batch_size=batch_size, rank=0, world_size=1,
                                    num_workers=workers))
        next(loader)  # worker start-up is paid once per run, not per batch
        start = time.perf_counter()
        for _ in range(n_batches):
            next(loader)
        rates[workers] = n_batches / (time.perf_counter() - start)
        del loader
    net, _ = build_network("ConditionalNAFNet-w16-quickstart", True)
    batch = {k: torch.rand(batch_size, 3, crop, crop) for k in ("gt", "lq")}
    step = make_train_step(net.train(), False)
    step_s = perf.median_time(lambda: step(batch), repeats=3)
    consumers = {"ConditionalNAFNet-w16-quickstart (measured)": step_s}
    measured = state["results"].get("train_step", {}).get("variants", {})
    if measured and not state["smoke"]:
        # the Refusion step at 4x128x128 scaled by pixels to 8x256x256 (8x the pixels)
        for k, v in measured.items():
            consumers[f"ConditionalNAFNet-w64 {k} (train_step x8 pixels)"] = 8 * v["median_s"]
    ratio = {k: rates[2] * s for k, s in consumers.items()}
    rows = [{"consumer": k, "step s": s, "loader batches/s (2 workers)": rates[2], "ratio": ratio[k]}
            for k, s in consumers.items()]
    print_table(f"data loader, {batch_size}x3x{crop}x{crop} random crops, flips, rotations "
                f"(0 workers: {rates[0]:.3g} batches/s)", rows, list(rows[0]))
    return {"batch": [batch_size, 3, crop, crop], "batches_per_s": {f"workers_{k}": v for k, v in rates.items()},
            "train_step_s": consumers, "loader_over_consumption": ratio}


def threading_probe(size: int) -> dict:
    """Subprocess body: GEMM rate and the quickstart noise network's forward under this process's settings."""
    net, _ = build_network("ConditionalNAFNet-w16-quickstart", True)
    net.eval()
    x = network_inputs("ConditionalNAFNet-w16-quickstart", size)
    with torch.inference_mode():
        forward = perf.time_side_by_side({"f": lambda: net(*x)}, repeats=5)["f"]
    return {"threads": torch.get_num_threads(), "gemm_fp32_gflops": perf.gemm_gflops(size=512, repeats=5),
            "quickstart_forward_s": forward["median_s"]}


def bench_threading(state: dict) -> dict:
    """OpenMP threads spin while they wait; on a loaded machine that costs far more than it saves."""
    size = 64 if state["smoke"] else 256
    cases = {}
    for threads in (1, 2):
        for policy in ("default", "PASSIVE"):
            env = {"OMP_WAIT_POLICY": None if policy == "default" else policy}
            report = perf.run_with_peak_rss("refusion.benchmarks.training:threading_probe", {"size": size}, threads=threads, env=env)
            cases[f"threads{threads}_{policy}"] = report["result"]
    rows = [{"case": k, "GEMM fp32 GFLOP/s": v["gemm_fp32_gflops"], "quickstart fwd s": v["quickstart_forward_s"]}
            for k, v in cases.items()]
    print_table(f"threads and OMP_WAIT_POLICY (quickstart forward 1x3x{size}x{size}; "
                f"load {perf.machine_info().get('load_average')})", rows, list(rows[0]))
    return {"image_size": size, "cases": cases}
