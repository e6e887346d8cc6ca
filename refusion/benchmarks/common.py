"""What the benchmarks share: the benchmarked networks and their inputs, tables, PSNR, the GEMM yardstick,
a training step, synthetic data."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from refusion.benchmarks import perf
from refusion.models import MODELS

GIB = 1024 ** 3
MIB = 1024 ** 2


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


def build_network(name: str, full: bool, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """The network ``name`` of NETWORKS (full or small config) with non-trivial skip-init gains."""
    cls, full_kwargs, small_kwargs, _ = NETWORKS[name]
    use_full = full or small_kwargs is None
    torch.manual_seed(seed)
    net = MODELS[cls](**(full_kwargs if use_full else small_kwargs))
    perf.activate_skip_gains(net, 0.1)
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
    """A benchmark's table, its title followed by what it was measured on (:func:`hardware_tag`)."""
    print(f"\n== {title}  [{hardware_tag()}]")
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def hardware_tag() -> str:
    """The processor facts every figure depends on: torch's CPU capability, native bfloat16 (and a
    oneDNN ISA cap), the thread count, and the GPU when there is one."""
    from refusion.inference.capability import native_bf16, onednn_isa_cap

    tag = f"CPU {torch.backends.cpu.get_cpu_capability()}, native bf16 {'yes' if native_bf16('cpu') else 'no'}"
    if onednn_isa_cap():
        tag += f", ONEDNN_MAX_CPU_ISA={onednn_isa_cap()}"
    tag += f", {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        tag += f", GPU {torch.cuda.get_device_name(0)}"
    return tag


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def gemm_rates(state: dict) -> dict:
    if "gemm" not in state["results"]:
        state["results"]["gemm"] = bench_gemm(state)
    return state["results"]["gemm"]


def bench_gemm(state: dict) -> dict:
    size = 256 if state["smoke"] else 1024 if not state["full"] else 2048
    # the median of many products: the yardstick varies by +-15% between short runs on a shared host
    rates = {perf.dtype_name(dt): perf.gemm_gflops(dt, size=size, repeats=max(9, state["repeats"]))
             for dt in (torch.float32, torch.bfloat16)}
    result = {"size": size, "gflops": rates}
    print_table("GEMM", [{"dtype": k, "GFLOP/s": v} for k, v in rates.items()], ["dtype", "GFLOP/s"])
    return result


def synthetic_pairs(size: int, count: int) -> Path:
    from refusion.data.synthetic import build_dataset

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


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, H, W) image with structure at several scales (cheap to make at any size)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 64), max(2, width // 64), generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    img += 0.05 * torch.rand(1, 3, height, width, generator=g)
    return img.clamp_(0, 1)
