"""The pipeline's ``half=True`` path: time against fp32 and the autocast path it replaced, and its
accuracy against fp32 on trained models.

Timing (the two target networks, random weights, one 256x256 image): ``refusion.restore`` with
NAFNet w32 and ``refusion.sample`` with the Refusion noise network w64, each as fp32, as
``bf16_autocast`` (the network passed as a plain callable, which the pipeline runs under
autocast: the half path before the bf16 weights) and as ``half`` (bf16 channels_last weights cast
once per call) and as ``bf16_unchecked`` (bf16 channels_last weights and inputs whatever the CPU
computes: what ``half`` ran before it asked whether bf16 is native; on a CPU that emulates bf16 --
or under ``ONEDNN_MAX_CPU_ISA=AVX2`` -- ``half`` falls back to float32 and this is the cost the check
saves), interleaved in the same run.

Accuracy (``--run`` an sde run, ``--regressor-run`` a regressor run, ``--images`` a folder of LQ
images): PSNR of the half output against the fp32 output, data range 1, per image.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import build_network, print_table, psnr_db, smooth_image
from refusion.benchmarks.sampling import VARIANT_DOC, autocast_only
from refusion.inference.capability import native_bf16, onednn_isa_cap
from refusion.inference.precision import as_network_input

ACCURACY_SAMPLER, ACCURACY_STEPS = "mr_sde", 10


def _variants(call, net) -> dict:
    """fp32 / bf16_autocast / half / bf16_unchecked callables of ``call(model_wrapper, half)``."""
    unchecked = bf16_unchecked(net)
    return {"fp32": lambda: call(lambda net: net, False),
            "bf16_autocast": lambda: call(autocast_only, True),
            "half": lambda: call(lambda net: net, True),
            "bf16_unchecked": lambda: call(lambda net: unchecked, False)}


def bf16_unchecked(net):
    """A bf16 channels_last copy of ``net`` as a plain callable that casts its floating inputs to
    bf16 channels_last, whatever the CPU computes (the pipeline converts the output to float32)."""
    half = perf.prepare_for_inference(copy.deepcopy(net), channels_last=True, dtype=torch.bfloat16)

    def cast(value):
        return as_network_input(value, torch.bfloat16) if isinstance(value, torch.Tensor) else value

    return lambda *args, **kwargs: half(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})


def _timed(fns: dict, repeats: int) -> dict:
    timings = perf.time_side_by_side(fns, repeats=repeats)
    reference = fns["fp32"]()
    for name, t in timings.items():
        t["speedup_vs_fp32"] = timings["fp32"]["median_s"] / t["median_s"]
        if name != "fp32":
            t["psnr_vs_fp32_db"] = psnr_db(fns[name](), reference, data_range=1.0)
    return timings


def _time_targets(state: dict) -> dict:
    import refusion
    from refusion.schedulers.ir_sde import IRSDEScheduler

    smoke = state["smoke"]
    size = 64 if smoke else 256
    lq = smooth_image(size, size, seed=2)
    out = {}
    nafnet, _ = build_network("NAFNet-w32-GoPro", True)
    nafnet.eval()
    out["restore NAFNet-w32-GoPro"] = _timed(_variants(
        lambda wrap, half: refusion.restore(lq, model=wrap(nafnet), progress=False, half=half), nafnet),
        state["repeats"])
    del nafnet
    name = "ConditionalNAFNet-w16-quickstart" if smoke else "ConditionalNAFNet-w64-Refusion"
    noise_net, _ = build_network(name, True)
    noise_net.eval()
    steps = 2
    out[f"sample {name}, {steps} mr_sde steps"] = _timed(_variants(
        lambda wrap, half: refusion.sample(lq, steps=steps, model=wrap(noise_net), sampler="mr_sde",
                                           scheduler=IRSDEScheduler(), progress=False, half=half,
                                           generator=torch.Generator().manual_seed(0)), noise_net),
        max(2, state["repeats"] - 1))
    rows = [{"case": case, **{f"{v} s": t[v]["median_s"] for v in t},
             **{f"{v} x": t[v]["speedup_vs_fp32"] for v in t if v != "fp32"},
             **{f"{v} PSNR": t[v]["psnr_vs_fp32_db"] for v in t if v != "fp32"}} for case, t in out.items()]
    print_table(f"half path against fp32, autocast and unchecked bf16, 1x3x{size}x{size}", rows, list(rows[0]))
    return {"image_size": size, "native_bf16": native_bf16("cpu"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": onednn_isa_cap(), "cases": out}


def _load_images(folder: str | None, smoke: bool) -> dict[str, torch.Tensor]:
    from refusion.data.inputs import to_batch

    if not folder:
        return {"synthetic": smooth_image(64 if smoke else 256, 64 if smoke else 256, seed=5)}
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not paths:
        raise FileNotFoundError(f"--images {folder}: no .png/.jpg/.bmp images in the folder")
    return {p.name: to_batch(Image.open(p).convert("RGB"))[0] for p in paths}


def _accuracy(state: dict) -> dict:
    """PSNR of half against fp32 on trained runs (``--run`` sde, ``--regressor-run`` regressor)."""
    import refusion

    images = _load_images(state.get("images"), state["smoke"])
    result = {}
    if state.get("run"):
        pipe = refusion.load_pipeline(state["run"])

        def sde(lq, half):
            return refusion.sample(lq, steps=ACCURACY_STEPS, model=pipe, sampler=ACCURACY_SAMPLER, progress=False,
                                   half=half, generator=torch.Generator().manual_seed(0))
        result["sde"] = {"run": str(state["run"]), "sampler": ACCURACY_SAMPLER, "steps": ACCURACY_STEPS, "seed": 0,
                         "psnr_half_vs_fp32_db": {k: psnr_db(sde(x, True), sde(x, False), 1.0) for k, x in images.items()}}
    if state.get("regressor_run"):
        net = refusion.load_model(state["regressor_run"])

        def regress(lq, half):
            return refusion.restore(lq, model=net, progress=False, half=half)
        result["regressor"] = {"run": str(state["regressor_run"]), "network": type(net.network).__name__,
                               "psnr_half_vs_fp32_db": {k: psnr_db(regress(x, True), regress(x, False), 1.0)
                                                        for k, x in images.items()}}
    for entry in result.values():
        values = list(entry["psnr_half_vs_fp32_db"].values())
        entry["psnr_min_db"], entry["psnr_mean_db"] = min(values), sum(values) / len(values)
    if result:
        rows = [{"model": k, "run": v["run"], "images": len(v["psnr_half_vs_fp32_db"]), "min PSNR dB": v["psnr_min_db"],
                 "mean PSNR dB": v["psnr_mean_db"]} for k, v in result.items()]
        print_table("half against fp32 on trained models", rows, list(rows[0]))
    return result


def bench_half_path(state: dict) -> dict:
    variants = {**VARIANT_DOC, "bf16_unchecked": "bf16 channels_last weights and inputs whatever the CPU computes "
                                                 "(half=True before it asked whether bf16 is native)"}
    return {"variants": variants, "timing": _time_targets(state), "trained_accuracy": _accuracy(state)}
