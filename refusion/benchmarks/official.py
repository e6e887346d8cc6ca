"""An imported official Refusion-size model restoring one image: the official test procedure vs refusion's.

The model goes the way a user's does: an official-format checkpoint (a bare state dict, as the
official code saves it) and a deshadow-style option file, through ``import_official`` into a
pipeline folder, then ``load_pipeline``. The same pipeline, weights and image then run

- ``official_procedure``: what the official test script does, 100 posterior steps in float32
  (refusion's ``posterior`` sampler is the official update, pinned to the official vectors in
  tests/test_samplers.py; the official code itself is not run here);
- ``refusion_mr_sde_10`` / ``refusion_mr_ode_5``: refusion's fast samplers.

The ratio is split into its two factors, network evaluations (NFE) and seconds per evaluation
(scheduler overhead, channels_last inputs, allocator), so each part is accounted for. Quality at
equal weights needs a trained model: docs/sampling.md has the study model's numbers.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml

from refusion.benchmarks import perf
from refusion.benchmarks.common import QUICKSTART, build_network, print_table

# the deshadow test option file's structure (codes/config/deshadow/options/test/refusion.yml)
OPTIONS = {
    "name": "refusion", "suffix": None, "model": "denoising", "distortion": "deshadow", "gpu_ids": [0],
    "sde": {"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005},
    "degradation": {"sigma": 25, "noise_type": "G", "scale": 4},
    "datasets": {"test1": {"name": "Test_Dataset", "mode": "LQGT", "dataroot_GT": "GT", "dataroot_LQ": "LQ"}},
    "path": {"pretrain_model_G": "pretrained/refusion.pth"},
}
VARIANTS = {"official_procedure": ("posterior", 100), "refusion_mr_sde_10": ("mr_sde", 10),
            "refusion_mr_ode_5": ("mr_ode", 5)}


def imported_pipeline(folder: Path, full: bool):
    """Save a Refusion-size network as an official checkpoint + option file and import it."""
    import refusion
    from refusion.official.importer import import_official

    net, _ = build_network("ConditionalNAFNet-w64-Refusion" if full else "ConditionalNAFNet-w16-quickstart", True)
    kwargs = {k: net.config[k] for k in ("width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums")}
    weights, options = folder / "refusion.pth", folder / "refusion.yml"
    torch.save(net.state_dict(), weights)
    options.write_text(yaml.safe_dump({**OPTIONS, "network_G": {"which_model_G": "ConditionalNAFNet",
                                                                "setting": {k: list(v) if isinstance(v, (list, tuple))
                                                                            else v for k, v in kwargs.items()}}}))
    result = import_official(folder / "imported", weights=weights, options=options)
    return refusion.load_pipeline(result.path), result


def bench_official(state: dict) -> dict:
    size = 32 if state["smoke"] else 256 if state["full"] else 128
    full = not state["smoke"]
    with tempfile.TemporaryDirectory() as tmp:
        pipe, imported = imported_pipeline(Path(tmp), full)
        lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))

        def run(sampler: str, steps: int):
            return pipe(lq, num_inference_steps=steps, sampler=sampler, output_type="pt", progress=False,
                        generator=torch.Generator().manual_seed(0)).images

        run("mr_sde", 1)                                     # warm-up: allocator, first-call costs
        timings = {}
        for name, (sampler, steps) in VARIANTS.items():
            repeats = 1 if steps >= 50 else max(1, state["repeats"])
            seconds = perf.median_time(lambda s=sampler, n=steps: run(s, n), repeats=repeats, warmup=0)
            timings[name] = {"sampler": sampler, "steps": steps, "nfe": steps, "seconds": seconds,
                             "seconds_per_nfe": seconds / steps}
    base = timings["official_procedure"]
    factors = {}
    for name, t in timings.items():
        if name == "official_procedure":
            continue
        factors[name] = {"speedup": base["seconds"] / t["seconds"], "nfe_ratio": base["nfe"] / t["nfe"],
                         "per_nfe_ratio": base["seconds_per_nfe"] / t["seconds_per_nfe"]}
    rows = [{"variant": n, "sampler": t["sampler"], "NFE": t["nfe"], "s / image": t["seconds"],
             "s / NFE": t["seconds_per_nfe"], "speedup": factors.get(n, {}).get("speedup", 1.0)}
            for n, t in timings.items()]
    print_table(f"imported {imported.network} ({imported.num_parameters:,} parameters), one {size}x{size} image, "
                f"float32 [{perf.machine_info().get('cpu_capability', '?')}]", rows, list(rows[0]))
    return {"image_size": size, "network": imported.network, "kwargs": imported.kwargs,
            "num_parameters": imported.num_parameters, "quickstart_size": not full,
            "network_config_small": None if full else QUICKSTART, "variants": timings, "factors": factors,
            "note": "speedup = nfe_ratio x per_nfe_ratio; the official procedure runs refusion's posterior sampler "
                    "(the official update) with the same weights and image"}
