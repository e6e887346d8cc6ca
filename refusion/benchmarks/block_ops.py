"""NAFBlock's element-wise work: the current forward against the plain one, side by side in one run.

The plain forward is the block as the official code writes it: ``x * (scale + 1) + shift`` for the
time modulation, ``conv3(x * sca(x))`` for the attention and ``inp + x * beta`` for the residuals.
The current one uses ``addcmul`` for those three and folds the attention into conv3's weight for
a single image (``NAFBlock.attend_and_project``). Both run the same weights on the same input in
the pipeline's float32 layout (channels_last inputs); outputs are compared too.
"""
from __future__ import annotations

import contextlib

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import build_network, gemm_rates, network_inputs, print_table, psnr_db
from refusion.models.blocks import NAFBlock


def _plain_forward(self, inp, time_emb=None):
    if self.mlp is not None:
        shift_att, scale_att, shift_ffn, scale_ffn = self.mlp(time_emb)[:, :, None, None].chunk(4, dim=1)
    x = self.norm1(inp)
    if self.mlp is not None:
        x = x * (scale_att + 1) + shift_att
    x = self.sg(self.conv2(self.conv1(x)))
    x = self.dropout1(self.conv3(x * getattr(self, self.attention_key)(x)))
    y = inp + x * self.beta
    x = self.norm2(y)
    if self.mlp is not None:
        x = x * (scale_ffn + 1) + shift_ffn
    x = self.dropout2(self.conv5(self.sg(self.conv4(x))))
    return y + x * self.gamma


@contextlib.contextmanager
def plain_blocks():
    """NAFBlock.forward replaced by the plain formulation for the duration (this benchmark only)."""
    current = NAFBlock.forward
    NAFBlock.forward = _plain_forward
    try:
        yield
    finally:
        NAFBlock.forward = current


def bench_block_ops(state: dict) -> dict:
    size = 64 if state["smoke"] else 256
    gemm = gemm_rates(state)["gflops"]["float32"]
    names = ["NAFNet-w32-GoPro", "ConditionalNAFNet-w64-Refusion"]
    results, rows = {}, []
    for name in names:
        net, _ = build_network(name, not state["smoke"])
        net.eval().requires_grad_(False)
        x = network_inputs(name, size, channels_last=True)

        def plain():
            with plain_blocks():
                return net(*x)

        with torch.inference_mode():
            flops = perf.count_flops(lambda: net(*x))
            probe, probe_flops = perf.gemm_probe(products=16 if not state["smoke"] else 2)
            timings = perf.time_side_by_side({"plain": plain, "current": lambda: net(*x), "gemm": probe},
                                             repeats=max(5, state["repeats"]), warmup=2)
            agreement = psnr_db(net(*x), plain())
        interleaved = probe_flops / timings.pop("gemm")["median_s"] / 1e9
        entry = {"flops": flops, "psnr_current_vs_plain_db": agreement, "gemm_fp32_gflops": gemm,
                 "gemm_interleaved_gflops": interleaved}
        for k, t in timings.items():
            entry[k] = {**t, "fraction_of_gemm": flops / t["median_s"] / 1e9 / interleaved,
                        "fraction_of_separate_gemm": flops / t["median_s"] / 1e9 / gemm}
        results[name] = entry
        rows.append({"network": name, "GEMM": interleaved, "plain s": timings["plain"]["median_s"],
                     "current s": timings["current"]["median_s"],
                     "x": timings["plain"]["median_s"] / timings["current"]["median_s"],
                     "plain %gemm": 100 * entry["plain"]["fraction_of_gemm"],
                     "current %gemm": 100 * entry["current"]["fraction_of_gemm"], "PSNR dB": agreement})
    print_table(f"NAFBlock element-wise work, float32 channels_last inputs 1x3x{size}x{size} (% of the GEMM "
                f"timed interleaved; separate GEMM {gemm:.0f} GFLOP/s)",
                rows, list(rows[0]))
    return {"image_size": size, "networks": results}
