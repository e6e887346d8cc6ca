#!/usr/bin/env python
"""Speed and memory of the toolkit on this machine, as JSON (never as tests).

    python tools/benchmark.py                      # every benchmark, quick mode (a few minutes)
    python tools/benchmark.py networks layernorm --out bench.json
    python tools/benchmark.py --full --out docs/benchmarks/DATE.json

Every comparison is timed side by side in the same run (variants interleaved round-robin, median
of ``--repeats`` runs), next to a GEMM rate measured in the same run, and the JSON records the
machine (torch version, threads, CPU model, load average before and after). Quick mode keeps the
target configurations (NAFNet w32, the Refusion noise network w64) at full size and shrinks the
rest; ``--full`` runs every network at its paper size, torch.compile and the larger images.
``--smoke`` shrinks everything (for checking the tool itself; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from refusion import perf
from refusion.models import MODELS, final_output

THIS_FILE = str(Path(__file__).resolve())
GIB = 1024 ** 3

# name -> (class, full-size kwargs, small kwargs, kind); "full" = the paper configuration
NETWORKS = {
    "NAFNet-w32-GoPro": ("NAFNet", dict(width=32, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1,
                                        dec_blk_nums=[1, 1, 1, 1]), None, "regressor"),
    "ConditionalNAFNet-w64-Refusion": ("ConditionalNAFNet", dict(width=64, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1,
                                                                 dec_blk_nums=[1, 1, 1, 1]), None, "noise"),
    "ConditionalNAFNet-w16-quickstart": ("ConditionalNAFNet", dict(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1,
                                                                   dec_blk_nums=[1, 1, 1]), None, "noise"),
    "Baseline-w32-GoPro": ("Baseline", dict(width=32, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1,
                                            dec_blk_nums=[1, 1, 1, 1]),
                           dict(width=16, enc_blk_nums=[1, 1, 1, 4], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
                           "regressor"),
    "NAFFTNet-w32": ("NAFFTNet", dict(width=32, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
                     dict(width=16, enc_blk_nums=[1, 1, 1, 4], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]), "regressor"),
    "HINet-wf64": ("HINet", dict(wf=64, depth=5), dict(wf=16, depth=4), "regressor"),
    "ConditionalUNet-nf64": ("ConditionalUNet", dict(nf=64, depth=4), dict(nf=16, depth=4), "noise"),
    "LatentUNet-dehazing": ("LatentUNet", dict(ch=8, ch_mult=[4, 8, 8, 16], embed_dim=8), None, "regressor"),
}
TARGET_NETWORKS = ("NAFNet-w32-GoPro", "ConditionalNAFNet-w64-Refusion")
QUICKSTART = NETWORKS["ConditionalNAFNet-w16-quickstart"][1]
QUICKSTART_LATENT_AE = dict(in_ch=3, out_ch=3, ch=4, ch_mult=[2, 4, 4, 8], embed_dim=8)


# --- helpers -----------------------------------------------------------------------------------------

def build_network(name: str, full: bool, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """The network ``name`` of NETWORKS (full or small config) with non-trivial skip-init gains."""
    cls, full_kwargs, small_kwargs, _ = NETWORKS[name]
    use_full = full or small_kwargs is None
    torch.manual_seed(seed)
    net = MODELS[cls](**(full_kwargs if use_full else small_kwargs))
    with torch.no_grad():
        # beta/gamma start at zero (every block the identity): give them values so outputs depend on the blocks
        for pname, p in net.named_parameters():
            if pname.endswith(("beta", "gamma")):
                p.copy_(0.1 * torch.randn_like(p))
    return net, "full" if use_full else "small"


def network_inputs(name: str, size: int, batch: int = 1, channels_last: bool = False, dtype=torch.float32) -> tuple:
    generator = torch.Generator().manual_seed(1)
    kind = NETWORKS[name][3]
    channels = 3
    shape = (batch, channels, size, size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    make = lambda: torch.rand(shape, generator=generator).to(dtype=dtype, memory_format=fmt)  # noqa: E731
    if kind == "noise":
        return make(), make(), torch.full((batch,), 50, dtype=torch.long)
    return (make(),)


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def psnr_db(a: torch.Tensor, b: torch.Tensor, data_range: float | None = None) -> float:
    """PSNR of ``a`` against ``b`` in float64; data_range defaults to b's value range."""
    a, b = a.double(), b.double()
    data_range = float(b.max() - b.min()) if data_range is None else data_range
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n== {title}")
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def gemm_rates(state: dict) -> dict:
    if "gemm" not in state["results"]:
        state["results"]["gemm"] = bench_gemm(state)
    return state["results"]["gemm"]


# --- gemm ----------------------------------------------------------------------------------------------

def bench_gemm(state: dict) -> dict:
    size = 256 if state["smoke"] else 1024 if not state["full"] else 2048
    rates = {perf.dtype_name(dt): perf.gemm_gflops(dt, size=size, repeats=max(3, state["repeats"]))
             for dt in (torch.float32, torch.bfloat16)}
    result = {"size": size, "gflops": rates}
    print_table("GEMM", [{"dtype": k, "GFLOP/s": v} for k, v in rates.items()], ["dtype", "GFLOP/s"])
    return result


# --- networks --------------------------------------------------------------------------------------------

def _forward_variants(name: str, net, size: int, compile_net: bool) -> tuple[dict, dict]:
    """Callables for every inference variant plus their outputs (for the accuracy check)."""
    x = network_inputs(name, size)
    x_cl = network_inputs(name, size, channels_last=True)
    x_bf = network_inputs(name, size, dtype=torch.bfloat16)
    net_cl = perf.prepare_for_inference(copy.deepcopy(net), channels_last=True)
    net_bf = perf.prepare_for_inference(copy.deepcopy(net), dtype=torch.bfloat16)
    net_cl_bf = perf.prepare_for_inference(copy.deepcopy(net), channels_last=True, dtype=torch.bfloat16)
    x_cl_bf = network_inputs(name, size, channels_last=True, dtype=torch.bfloat16)
    fns = {
        "fp32": lambda: net(*x),
        "bf16_autocast": lambda: _autocast_call(net, x),
        "channels_last": lambda: net_cl(*x_cl),
        "channels_last_bf16_autocast": lambda: _autocast_call(net_cl, x_cl),
        "bf16_weights": lambda: net_bf(*x_bf),
        "channels_last_bf16_weights": lambda: net_cl_bf(*x_cl_bf),
    }
    extra = {}
    if compile_net:
        compiled = perf.prepare_for_inference(copy.deepcopy(net), compile=True)
        start = time.perf_counter()
        compiled(*x)
        extra["compile_s"] = time.perf_counter() - start
        fns["compiled_fp32"] = lambda: compiled(*x)
    return fns, extra


def _drop_failing(fns: dict) -> dict:
    """Run every variant once; remove (and report) those that raise, so one bad path costs one row."""
    failed = {}
    for key, fn in list(fns.items()):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the error text is the measurement
            failed[key] = f"{type(exc).__name__}: {exc}"
            del fns[key]
    return failed


def _autocast_call(net, x):
    with autocast(True):
        return net(*x)


def _fwd_bwd(net, x, bf16: bool):
    net.zero_grad(set_to_none=True)
    with autocast(bf16):
        out = final_output(net(*x))
    out.float().square().mean().backward()


def bench_networks(state: dict) -> dict:
    full, smoke, repeats = state["full"], state["smoke"], state["repeats"]
    size = 64 if smoke else 256
    gemm = gemm_rates(state)["gflops"]
    names = state["networks"] or (list(NETWORKS) if not smoke else ["ConditionalNAFNet-w16-quickstart", "NAFNet-w32-GoPro"])
    results, rows = {}, []
    for name in names:
        net, config = build_network(name, full and not smoke)
        net.eval().requires_grad_(False)
        x = network_inputs(name, size)
        entry = {"config": config, "kwargs": dict(net.config) if hasattr(net, "config") else {},
                 "parameters": perf.parameter_count(net), "input": [1, 3, size, size]}
        with torch.inference_mode():
            entry["forward_flops"] = perf.count_flops(lambda: net(*x))
            compile_net = state["compile"] and (full or name == "ConditionalNAFNet-w16-quickstart")
            fns, extra = _forward_variants(name, net, size, compile_net)
            entry.update(extra)
            entry["failed_variants"] = _drop_failing(fns)
            timings = perf.time_side_by_side(fns, repeats=repeats)
            ref = final_output(fns["fp32"]()).float()
            accuracy = {k: psnr_db(final_output(fn()).float(), ref) for k, fn in fns.items() if k != "fp32"}
        forward = {}
        for variant, t in timings.items():
            rate = entry["forward_flops"] / t["median_s"] / 1e9
            gemm_ref = gemm["bfloat16" if "bf16" in variant else "float32"]
            forward[variant] = {**t, "gflops": rate, "fraction_of_gemm": rate / gemm_ref,
                                "speedup_vs_fp32": timings["fp32"]["median_s"] / t["median_s"],
                                "psnr_vs_fp32_db": accuracy.get(variant)}
        entry["forward"] = forward
        entry["backward"] = _bench_backward(name, net, size, repeats)
        entry["peak_rss"] = {mode: _network_memory_subprocess(name, full and not smoke, size, mode)
                             for mode in ("forward", "forward_backward")}
        results[name] = entry
        rows.append({"network": name, "config": config, "params(M)": entry["parameters"] / 1e6,
                     "GFLOP": entry["forward_flops"] / 1e9, "fwd fp32 s": forward["fp32"]["median_s"],
                     "fp32 %gemm": 100 * forward["fp32"]["fraction_of_gemm"],
                     "fwd bf16 s": forward["bf16_autocast"]["median_s"],
                     "bf16 x": forward["bf16_autocast"]["speedup_vs_fp32"],
                     "cl x": forward.get("channels_last", {}).get("speedup_vs_fp32"),
                     "bf16w x": forward.get("bf16_weights", {}).get("speedup_vs_fp32"),
                     "cl+bf16w x": forward.get("channels_last_bf16_weights", {}).get("speedup_vs_fp32"),
                     "f+b fp32 s": entry["backward"]["fp32"]["median_s"],
                     "f+b bf16 s": entry["backward"]["bf16_autocast"]["median_s"],
                     "fwd MiB": entry["peak_rss"]["forward"]["above_import_mib"],
                     "f+b MiB": entry["peak_rss"]["forward_backward"]["above_import_mib"]})
        del net, fns
    print_table(f"networks, 1x3x{size}x{size} (GEMM fp32 {gemm['float32']:.0f}, bf16 {gemm['bfloat16']:.0f} GFLOP/s)",
                rows, list(rows[0]))
    return {"image_size": size, "gemm_gflops": gemm, "networks": results}


def _bench_backward(name: str, net, size: int, repeats: int) -> dict:
    train_net = copy.deepcopy(net).train().requires_grad_(True)
    x = network_inputs(name, size)
    flops = perf.count_flops(lambda: _fwd_bwd(train_net, x, False))
    timings = perf.time_side_by_side({"fp32": lambda: _fwd_bwd(train_net, x, False),
                                      "bf16_autocast": lambda: _fwd_bwd(train_net, x, True)},
                                     repeats=max(2, repeats - 2))
    for t in timings.values():
        t["gflops"] = flops / t["median_s"] / 1e9
    return {"flops": flops, **timings}


def network_memory(name: str, full: bool, size: int, mode: str) -> dict:
    """Subprocess body: one forward (inference) or forward+backward; timings are not taken here."""
    net, _ = build_network(name, full)
    x = network_inputs(name, size)
    if mode == "forward":
        net.eval()
        with torch.inference_mode():
            net(*x)
    else:
        _fwd_bwd(net.train(), x, False)
    return {"parameters": perf.parameter_count(net)}


def _network_memory_subprocess(name: str, full: bool, size: int, mode: str) -> dict:
    report = perf.run_with_peak_rss(f"{THIS_FILE}:network_memory", dict(name=name, full=full, size=size, mode=mode))
    return {"peak_rss_mib": report["peak_rss_bytes"] / 2 ** 20,
            "above_import_mib": (report["peak_rss_bytes"] - report["baseline_rss_bytes"]) / 2 ** 20}


# --- layernorm -------------------------------------------------------------------------------------------

class NaiveLayerNorm2dFunction(torch.autograd.Function):
    """Channel LayerNorm with a hand-written backward, the way the official NAFNet code does it."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        inv_std = (var + eps).rsqrt()
        y = (x - mean) * inv_std
        ctx.save_for_backward(y, inv_std, weight)
        return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad_out):
        y, inv_std, weight = ctx.saved_tensors
        g = grad_out * weight.view(1, -1, 1, 1)
        # d/dx of (x - mean) * inv_std: remove the mean of g and its projection on y
        grad_x = inv_std * (g - g.mean(1, keepdim=True) - y * (g * y).mean(1, keepdim=True))
        return grad_x, (grad_out * y).sum((0, 2, 3)), grad_out.sum((0, 2, 3)), None


def _plain_ops_layer_norm(x, weight, bias, eps):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return weight.view(1, -1, 1, 1) * (x - mean) / (var + eps).sqrt() + bias.view(1, -1, 1, 1)


def bench_layernorm(state: dict) -> dict:
    from refusion.models.blocks import LayerNorm2d

    shapes = [(4, 64, 32, 32)] if state["smoke"] else [(1, 64, 256, 256), (4, 32, 128, 128), (1, 512, 32, 32)]
    results, rows = [], []
    for shape in shapes:
        norm = LayerNorm2d(shape[1])
        with torch.no_grad():
            norm.weight.normal_(1, 0.1)
            norm.bias.normal_(0, 0.1)
        x = torch.randn(shape, requires_grad=True)
        x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
        grad = torch.randn(shape)
        impls = {
            "ours_LayerNorm2d": lambda inp: norm(inp),
            "naive_autograd_function": lambda inp: NaiveLayerNorm2dFunction.apply(inp, norm.weight, norm.bias, norm.eps),
            "plain_ops_autograd": lambda inp: _plain_ops_layer_norm(inp, norm.weight, norm.bias, norm.eps),
        }
        outputs = {}
        for k, fn in impls.items():
            x.grad = None
            y = fn(x)
            y.backward(grad)
            outputs[k] = (y.detach(), x.grad.clone())
        ref_y, ref_g = outputs["naive_autograd_function"]
        fns = {k: (lambda fn=fn: fn(x).backward(grad)) for k, fn in impls.items()}
        fns["ours_LayerNorm2d_channels_last"] = lambda: norm(x_cl).backward(grad)
        timings = perf.time_side_by_side(fns, repeats=max(5, state["repeats"]))
        entry = {"shape": list(shape), "timings": timings,
                 "max_abs_diff_vs_naive": {k: [float((o[0] - ref_y).abs().max()), float((o[1] - ref_g).abs().max())]
                                           for k, o in outputs.items()}}
        results.append(entry)
        naive = timings["naive_autograd_function"]["median_s"]
        for k, t in timings.items():
            rows.append({"shape": "x".join(map(str, shape)), "impl": k, "fwd+bwd ms": 1e3 * t["median_s"],
                         "speedup vs naive": naive / t["median_s"]})
    print_table("LayerNorm2d forward+backward", rows, ["shape", "impl", "fwd+bwd ms", "speedup vs naive"])
    return {"cases": results}


# --- scheduler ---------------------------------------------------------------------------------------------

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


# --- sampling ----------------------------------------------------------------------------------------------

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
        def run(half: bool, steps=steps):
            return refusion.sample(lq, steps=steps, model=net, scheduler=scheduler, progress=False, half=half,
                                   generator=torch.Generator().manual_seed(0))
        timings = perf.time_side_by_side({"fp32": lambda: run(False), "bf16_autocast": lambda: run(True)},
                                         repeats=max(2, state["repeats"] - 2), warmup=0)
        entry = {k: {**t, "per_step_s": t["median_s"] / steps} for k, t in timings.items()}
        entry["bf16_psnr_vs_fp32_db"] = psnr_db(run(True), run(False), data_range=1.0)
        results[steps] = entry
        rows.append({"steps": steps, "fp32 s/image": entry["fp32"]["median_s"],
                     "bf16 s/image": entry["bf16_autocast"]["median_s"],
                     "bf16 PSNR vs fp32": entry["bf16_psnr_vs_fp32_db"]})
    print_table(f"sampling one {size}x{size} image ({source})", rows, list(rows[0]))
    return {"image_size": size, "model": source, "steps": results}


# --- dataloader ----------------------------------------------------------------------------------------------

def _synthetic_pairs(size: int, count: int) -> Path:
    from refusion.synthetic import build_dataset

    root = Path(tempfile.gettempdir()) / f"refusion_bench_noise_{size}_{count}"
    if not (root / "manifest.json").is_file():
        build_dataset(root, "noise", seed=0, size=size, num_train=count, num_val=1, num_test=1, overwrite=True)
    return root


def make_train_step(net, bf16: bool, lr: float = 4e-5):
    """``step(batch) -> loss``: the SDE objective, backward and a Lion step (the official optimizer)."""
    from lion_pytorch import Lion

    from refusion.schedulers.ir_sde import IRSDEScheduler
    from refusion.training.objectives import sde_objective

    scheduler, cfg = IRSDEScheduler(), SimpleNamespace(loss="l1")
    optimizer = Lion(net.parameters(), lr=lr, betas=(0.9, 0.99))

    def step(batch: dict) -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16):
            loss, _ = sde_objective(net, batch, scheduler, cfg)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def bench_dataloader(state: dict) -> dict:
    from refusion.data import PairedImageDataset
    from refusion.training.data_stream import stream_loader

    crop, batch_size = (64, 4) if state["smoke"] else (256, 8)
    root = _synthetic_pairs(crop + 32, 8 if state["smoke"] else 24)
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


# --- large images ----------------------------------------------------------------------------------------------

def _smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, H, W) image with structure at several scales (cheap to make at any size)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 64), max(2, width // 64), generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    img += 0.05 * torch.rand(1, 3, height, width, generator=g)
    return img.clamp_(0, 1)


def large_latent(height: int, width: int, steps: int, tile: int | None) -> dict:
    """Subprocess body: the latent path (small LatentUNet + small noise network) on one image."""
    from refusion.models import ConditionalNAFNet, LatentUNet
    from refusion.pipeline import RefusionPipeline
    from refusion.schedulers.ir_sde import IRSDEScheduler

    torch.manual_seed(0)
    ae = LatentUNet(**QUICKSTART_LATENT_AE).eval()
    unet = ConditionalNAFNet(img_channel=QUICKSTART_LATENT_AE["embed_dim"], **QUICKSTART).eval()
    pipe = RefusionPipeline(unet=unet, scheduler=IRSDEScheduler(), autoencoder=ae)
    image = _smooth_image(height, width)
    start = time.perf_counter()
    out = pipe(image, num_inference_steps=steps, output_type="pt", latent=True, tile_size=tile, progress=False,
               generator=torch.Generator().manual_seed(0)).images
    return {"seconds": time.perf_counter() - start, "output_shape": list(out.shape), "finite": bool(out.isfinite().all())}


def large_tiled(height: int, width: int, steps: int, tile: int, overlap: int) -> dict:
    """Subprocess body: the pixel-space SDE with a small noise network, tile by tile."""
    import refusion

    net, _ = build_network("ConditionalNAFNet-w16-quickstart", True)
    image = _smooth_image(height, width)
    start = time.perf_counter()
    out = refusion.sample(image, steps=steps, model=net.eval(), tile_size=tile, tile_overlap=overlap, progress=False,
                          generator=torch.Generator().manual_seed(0))
    return {"seconds": time.perf_counter() - start, "output_shape": list(out.shape), "finite": bool(out.isfinite().all())}


def nafnet_tiled(size: int, tile: int, overlap: int) -> dict:
    """Subprocess body: NAFNet w32 (GoPro config) restoring a size x size image tile by tile."""
    import refusion

    net, _ = build_network("NAFNet-w32-GoPro", True)
    image = _smooth_image(size, size)
    start = time.perf_counter()
    out = refusion.restore(image, model=net.eval(), tile_size=tile, tile_overlap=overlap, progress=False)
    return {"seconds": time.perf_counter() - start, "output_shape": list(out.shape)}


def _in_subprocess(fn_name: str, **kwargs) -> dict:
    report = perf.run_with_peak_rss(f"{THIS_FILE}:{fn_name}", kwargs)
    return {**kwargs, **report["result"], "peak_rss_gib": report["peak_rss_bytes"] / GIB,
            "baseline_rss_gib": report["baseline_rss_bytes"] / GIB, "process_wall_s": report["wall_s"]}


def _tiled_vs_whole(size: int, tile: int, overlap: int, tlc: int | None) -> dict:
    import refusion

    net, _ = build_network("NAFNet-w32-GoPro", True)
    net.eval()
    gt = _smooth_image(size, size, seed=3)
    lq = (gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    kw = dict(model=net, tlc=tlc, progress=False)
    start = time.perf_counter()
    whole = refusion.restore(lq, **kw)
    whole_s = time.perf_counter() - start
    start = time.perf_counter()
    tiled = refusion.restore(lq, tile_size=tile, tile_overlap=overlap, **kw)
    tiled_s = time.perf_counter() - start
    return {"size": size, "tile": tile, "overlap": overlap, "tlc_train_size": tlc, "whole_s": whole_s,
            "tiled_s": tiled_s, "psnr_tiled_vs_whole_db": psnr_db(tiled, whole, 1.0),
            "psnr_delta_vs_gt_db": abs(psnr_db(tiled, gt, 1.0) - psnr_db(whole, gt, 1.0)),
            "max_abs_diff": float((tiled - whole).abs().max())}


def bench_large_image(state: dict) -> dict:
    smoke, full = state["smoke"], state["full"]
    h, w = (480, 320) if smoke else (4000, 6000)
    steps = 2 if smoke else 5 if full else 2
    out = {
        "latent_path": _in_subprocess("large_latent", height=h, width=w, steps=steps, tile=None),
        "tiled_pixels": _in_subprocess("large_tiled", height=h, width=w, steps=max(1, steps // 2) if not full else 2,
                                       tile=512 if not smoke else 128, overlap=32),
        "nafnet_tiled": _in_subprocess("nafnet_tiled", size=256 if smoke else 2048 if full else 1024,
                                       tile=512 if not smoke else 128, overlap=64 if not smoke else 32),
    }
    compare_size, compare_tile = (128, 64) if smoke else (1024, 512) if full else (512, 256)
    out["tiled_vs_whole"] = [_tiled_vs_whole(compare_size, compare_tile, compare_tile // 4, tlc)
                             for tlc in (None, compare_tile)]
    rows = [{"case": k, "image": f"{v.get('width', v.get('size'))}x{v.get('height', v.get('size'))}",
             "steps": v.get("steps"), "seconds": v["seconds"], "peak RSS GiB": v["peak_rss_gib"]}
            for k, v in out.items() if isinstance(v, dict)]
    print_table("large images (each in a fresh process)", rows, list(rows[0]))
    print_table("NAFNet w32 tiled vs whole image", out["tiled_vs_whole"],
                ["size", "tile", "overlap", "tlc_train_size", "psnr_tiled_vs_whole_db", "psnr_delta_vs_gt_db",
                 "whole_s", "tiled_s"])
    return out


# --- train step ----------------------------------------------------------------------------------------------

def bench_train_step(state: dict) -> dict:
    smoke = state["smoke"]
    name = "ConditionalNAFNet-w16-quickstart" if smoke else "ConditionalNAFNet-w64-Refusion"
    batch_size, crop = (2, 32) if smoke else (4, 128)
    g = torch.Generator().manual_seed(5)
    batch = {k: torch.rand(batch_size, 3, crop, crop, generator=g) for k in ("gt", "lq")}
    steps = {}
    for variant, bf16 in (("fp32", False), ("bf16_autocast", True)):
        net, _ = build_network(name, True)
        steps[variant] = (lambda step=make_train_step(net.train(), bf16): step(batch))
    timings = perf.time_side_by_side(steps, repeats=max(2, state["repeats"] - 2))
    rows = [{"variant": k, "step s": t["median_s"], "min s": t["min_s"]} for k, t in timings.items()]
    print_table(f"train step {name}, batch {batch_size}x3x{crop}x{crop}, Lion", rows, list(rows[0]))
    result = {"network": name, "batch": [batch_size, 3, crop, crop], "optimizer": "lion", "variants": timings}
    result["loss_curves"] = _loss_curves(state)
    return result


def _loss_curves(state: dict) -> dict:
    """The quickstart SDE objective trained twice from the same seed, fp32 and bf16 autocast."""
    from refusion.data import PairedImageDataset

    iters = 20 if state["smoke"] else 600 if state["full"] else 300
    root = _synthetic_pairs(128, 24)
    dataset = PairedImageDataset(root / "train" / "gt", root / "train" / "lq", gt_size=64, use_flip=True,
                                 use_rot=True, seed=0)
    curves = {}
    for variant, bf16 in (("fp32", False), ("bf16_autocast", True)):
        net, _ = build_network("ConditionalNAFNet-w16-quickstart", True, seed=0)
        step = make_train_step(net.train(), bf16, lr=3e-4)
        torch.manual_seed(0)  # same timesteps and noise in both runs
        losses = []
        for i in range(iters):
            items = [dataset[(4 * i + j) % len(dataset)] for j in range(4)]
            losses.append(step({k: torch.stack([it[k] for it in items]) for k in ("gt", "lq")}))
        curves[variant] = losses
    window = max(1, iters // 10)
    smooth = {k: [sum(v[i:i + window]) / window for i in range(0, iters - window + 1, window)] for k, v in curves.items()}
    return {"iterations": iters, "batch": [4, 3, 64, 64], "window": window, "mean_loss_per_window": smooth,
            "raw": curves}


# --- threading ----------------------------------------------------------------------------------------------

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
            report = perf.run_with_peak_rss(f"{THIS_FILE}:threading_probe", {"size": size}, threads=threads, env=env)
            cases[f"threads{threads}_{policy}"] = report["result"]
    rows = [{"case": k, "GEMM fp32 GFLOP/s": v["gemm_fp32_gflops"], "quickstart fwd s": v["quickstart_forward_s"]}
            for k, v in cases.items()]
    print_table(f"threads and OMP_WAIT_POLICY (quickstart forward 1x3x{size}x{size}; "
                f"load {perf.machine_info().get('load_average')})", rows, list(rows[0]))
    return {"image_size": size, "cases": cases}


BENCHMARKS = {
    "threading": bench_threading, "gemm": bench_gemm, "networks": bench_networks, "layernorm": bench_layernorm, "scheduler": bench_scheduler,
    "sampling": bench_sampling, "train_step": bench_train_step, "dataloader": bench_dataloader,
    "large_image": bench_large_image,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="*", help=f"any of: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--full", action="store_true", help="paper-size configs, compile, larger images")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the tool (numbers meaningless)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (implied by --full)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--run", help="a trained sde run directory for the sampling benchmark")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), help="networks benchmark: only these")
    args = parser.parse_args(argv)
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = args.benchmarks or list(BENCHMARKS)
    state = {"full": args.full, "smoke": args.smoke, "repeats": args.repeats, "compile": args.compile or args.full,
             "run": args.run, "networks": args.networks, "results": {}}
    report = {"machine": perf.machine_info(), "settings": {k: v for k, v in state.items() if k != "results"},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "benchmarks": state["results"], "seconds": {}}
    print(json.dumps(report["machine"]))
    for name in selected:
        start = time.perf_counter()
        try:
            state["results"][name] = BENCHMARKS[name](state)
        except Exception as exc:  # noqa: BLE001 - keep the other benchmarks' results
            import traceback

            traceback.print_exc()
            state["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["seconds"][name] = time.perf_counter() - start
        if args.out:  # partial results survive an interrupted run
            _write(args.out, report)
    report["load_average_end"] = perf.machine_info().get("load_average")
    if args.out:
        _write(args.out, report)
        print(f"\nwrote {args.out}")
    return 0


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(report), indent=1, default=str, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finite(value):
    """JSON has no inf/nan: write them as strings ("inf" for identical outputs' PSNR)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
