"""Where a forward pass spends its time: every convolution and LayerNorm re-run alone on the input
it saw inside the network, summed by kind, against the whole forward, in the pipeline's float32
layout (channels_last inputs) and in its half path (bfloat16 channels_last weights).

Alone, a layer finds its input and weights in cache; inside the network it does not, and the
element-wise work between layers (gates, residuals, modulation, pooling, pixel shuffles) has no
layer to time. Both land in the "rest" row: the whole forward minus the timed layers.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn

from refusion.benchmarks import perf
from refusion.benchmarks.common import TARGET_NETWORKS, build_network, network_inputs, print_table
from refusion.models.blocks import GainLayerNorm2d, LayerNorm2d, NAFBlock


def _kind(module: nn.Module, x: torch.Tensor) -> str:
    if isinstance(module, (LayerNorm2d, GainLayerNorm2d)):
        return "layer norm"
    if module.groups > 1:
        return "depthwise 3x3" if module.kernel_size == (3, 3) else f"grouped {module.kernel_size[0]}x{module.kernel_size[1]}"
    if module.kernel_size == (1, 1):
        return "1x1 on pooled 1x1 maps" if x.shape[-2:] == (1, 1) else "1x1"
    return f"{module.kernel_size[0]}x{module.kernel_size[1]} stride {module.stride[0]}"


def _conv_flops(conv: nn.Conv2d, x: torch.Tensor) -> int:
    out_h = (x.shape[-2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    out_w = (x.shape[-1] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    per_output = 2 * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    return x.shape[0] * conv.out_channels * out_h * out_w * per_output


def captured_layers(net: nn.Module, inputs: tuple) -> list[tuple[nn.Module, torch.Tensor]]:
    """(layer, its input) for every convolution and channel LayerNorm call of one forward.

    For one image NAFBlock folds the channel attention into conv3's weight and calls F.conv2d
    (conv3's hooks do not fire); its input is the attention's input, so it is captured there.
    """
    calls, handles = [], []

    def record(module):
        return lambda _m, args: calls.append((module, args[0].detach().clone(memory_format=torch.preserve_format)))

    for module in net.modules():
        if isinstance(module, (nn.Conv2d, LayerNorm2d, GainLayerNorm2d)):
            handles.append(module.register_forward_pre_hook(record(module)))
        if isinstance(module, NAFBlock) and inputs[0].shape[0] == 1:
            attention = getattr(module, module.attention_key)
            handles.append(attention.register_forward_pre_hook(record(module.conv3)))
    try:
        with torch.inference_mode():
            net(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _layer_times(name: str, net: nn.Module, inputs: tuple, dtype: torch.dtype, repeats: int, smoke: bool) -> tuple[dict, list]:
    calls = captured_layers(net, inputs)
    kinds = defaultdict(lambda: {"calls": 0, "seconds": 0.0, "flops": 0})
    with torch.inference_mode():
        gemm_fn, gemm_flops = perf.gemm_probe(dtype, products=2 if smoke else 16)
        timed = perf.time_side_by_side({"forward": lambda: net(*inputs), "gemm": gemm_fn}, repeats=repeats)
        for module, x in calls:
            entry = kinds[_kind(module, x)]
            entry["calls"] += 1
            entry["seconds"] += perf.median_time(lambda: module(x), repeats=repeats)
            entry["flops"] += _conv_flops(module, x) if isinstance(module, nn.Conv2d) else 0
    forward_s = timed["forward"]["median_s"]
    gemm = gemm_flops / timed["gemm"]["median_s"] / 1e9
    kinds["rest (element-wise work, cache misses)"] = {
        "calls": None, "seconds": forward_s - sum(k["seconds"] for k in kinds.values()), "flops": 0}
    rows = []
    label = perf.dtype_name(dtype)
    for kind, entry in kinds.items():
        entry["gflops"] = entry["flops"] / entry["seconds"] / 1e9 if entry["flops"] and entry["seconds"] > 0 else None
        entry["share_of_forward"] = entry["seconds"] / forward_s
        rows.append({"network": name, "dtype": label, "kind": kind, "calls": entry["calls"], "ms": 1e3 * entry["seconds"],
                     "GFLOP": entry["flops"] / 1e9, "GFLOP/s": entry["gflops"],
                     "% of GEMM": 100 * entry["gflops"] / gemm if entry["gflops"] else None,
                     "% of forward": 100 * entry["share_of_forward"]})
    total_flops = sum(k["flops"] for k in kinds.values())
    rows.append({"network": name, "dtype": label, "kind": "whole forward", "calls": None, "ms": 1e3 * forward_s,
                 "GFLOP": total_flops / 1e9, "GFLOP/s": total_flops / forward_s / 1e9,
                 "% of GEMM": 100 * total_flops / forward_s / 1e9 / gemm, "% of forward": 100.0})
    result = {"forward_s": forward_s, "forward_gflops": total_flops / forward_s / 1e9, "gemm_gflops": gemm,
              "kinds": dict(kinds)}
    return result, rows


def bench_layers(state: dict) -> dict:
    """float32 (the caller's weights, channels_last inputs) and the half path's bfloat16
    (channels_last bfloat16 weights), each against a GEMM of its own dtype."""
    size = 64 if state["smoke"] else 256
    names = state["networks"] or list(TARGET_NETWORKS)
    results, rows = {}, []
    for name in names:
        net, config = build_network(name, not state["smoke"])
        net.eval().requires_grad_(False)
        half = perf.prepare_for_inference(copy.deepcopy(net), channels_last=True, dtype=torch.bfloat16)
        results[name] = {"config": config, "input": [1, 3, size, size]}
        for dtype, module in ((torch.float32, net), (torch.bfloat16, half)):
            inputs = network_inputs(name, size, channels_last=True, dtype=dtype)
            result, new_rows = _layer_times(name, module, inputs, dtype, state["repeats"], state["smoke"])
            results[name][perf.dtype_name(dtype)] = result
            rows += new_rows
    print_table(f"layers alone vs the whole forward, 1x3x{size}x{size}, channels_last inputs", rows, list(rows[0]))
    return {"image_size": size, "networks": results}
