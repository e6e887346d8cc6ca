"""Network throughput (every inference variant against fp32, FLOP rate against the GEMM), memory,
and the LayerNorm2d implementations."""
from __future__ import annotations

import copy
import time

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import NETWORKS, autocast, build_network, gemm_rates, network_inputs, print_table, psnr_db
from refusion.models import final_output


def _forward_variants(name: str, net, size: int, compile_net: bool, onnx: bool = False) -> tuple[dict, dict]:
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
        # what the pipeline runs in float32: the caller's weights, channels_last inputs
        "pipeline_fp32": lambda: net(*x_cl),
        "bf16_autocast": lambda: _autocast_call(net, x),
        "channels_last": lambda: net_cl(*x_cl),
        "channels_last_bf16_autocast": lambda: _autocast_call(net_cl, x_cl),
        "bf16_weights": lambda: net_bf(*x_bf),
        "channels_last_bf16_weights": lambda: net_cl_bf(*x_cl_bf),
    }
    extra = {}
    if onnx:
        fns["onnxruntime_fp32"], extra["onnx_export_s"] = _onnxruntime_variant(net, x)
    if compile_net:
        compiled = perf.prepare_for_inference(copy.deepcopy(net), compile=True)
        start = time.perf_counter()
        compiled(*x)
        extra["compile_s"] = time.perf_counter() - start
        fns["compiled_fp32"] = lambda: compiled(*x)
    return fns, extra


def _onnxruntime_variant(net, x: tuple):
    """The network exported to ONNX (refusion.inference.export) and run by ONNX Runtime on the same threads."""
    import tempfile

    from refusion.inference.export import export_onnx, runtime_session

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = export_onnx(net, f"{folder}/net.onnx", check=False)["path"]
        seconds = time.perf_counter() - start
        session = runtime_session(path)
    feed = {i.name: v.numpy() for i, v in zip(session.get_inputs(), x)}
    return (lambda: torch.from_numpy(session.run(None, feed)[-1])), seconds


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
            fns, extra = _forward_variants(name, net, size, compile_net, state.get("onnx", False))
            entry.update(extra)
            entry["failed_variants"] = _drop_failing(fns)
            # GEMM probes interleaved with the variants: the yardstick sees the same clock and load
            probes = {f"gemm_{perf.dtype_name(dt)}": perf.gemm_probe(dt, products=16 if not smoke else 2)
                      for dt in (torch.float32, torch.bfloat16)}
            timings = perf.time_side_by_side({**fns, **{k: fn for k, (fn, _) in probes.items()}}, repeats=repeats)
            interleaved = {k.removeprefix("gemm_"): flops / timings.pop(k)["median_s"] / 1e9
                           for k, (_, flops) in probes.items()}
            entry["gemm_interleaved_gflops"] = interleaved
            ref = final_output(fns["fp32"]()).float()
            accuracy = {k: psnr_db(final_output(fn()).float(), ref) for k, fn in fns.items() if k != "fp32"}
        forward = {}
        for variant, t in timings.items():
            rate = entry["forward_flops"] / t["median_s"] / 1e9
            dtype_key = "bfloat16" if "bf16" in variant else "float32"
            forward[variant] = {**t, "gflops": rate, "fraction_of_gemm": rate / interleaved[dtype_key],
                                "fraction_of_separate_gemm": rate / gemm[dtype_key],
                                "speedup_vs_fp32": timings["fp32"]["median_s"] / t["median_s"],
                                "psnr_vs_fp32_db": accuracy.get(variant)}
        entry["forward"] = forward
        entry["backward"] = _bench_backward(name, net, size, repeats)
        entry["peak_rss"] = {mode: _network_memory_subprocess(name, full and not smoke, size, mode)
                             for mode in ("forward", "forward_backward")}
        results[name] = entry
        rows.append({"network": name, "config": config, "params(M)": entry["parameters"] / 1e6,
                     "GEMM fp32": interleaved["float32"],
                     "GFLOP": entry["forward_flops"] / 1e9, "fwd fp32 s": forward["fp32"]["median_s"],
                     "fp32 %gemm": 100 * forward["fp32"]["fraction_of_gemm"],
                     "pipeline fp32 %gemm": 100 * forward["pipeline_fp32"]["fraction_of_gemm"],
                     "ort %gemm": 100 * forward["onnxruntime_fp32"]["fraction_of_gemm"] if "onnxruntime_fp32" in forward else None,
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
    print_table(f"networks, 1x3x{size}x{size} (% of the GEMM timed interleaved with each network; separate GEMM "
                f"fp32 {gemm['float32']:.0f}, bf16 {gemm['bfloat16']:.0f} GFLOP/s)",
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
    report = perf.run_with_peak_rss("refusion.benchmarks.networks:network_memory", dict(name=name, full=full, size=size, mode=mode))
    return {"peak_rss_mib": report["peak_rss_bytes"] / 2 ** 20,
            "above_import_mib": (report["peak_rss_bytes"] - report["baseline_rss_bytes"]) / 2 ** 20}


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
