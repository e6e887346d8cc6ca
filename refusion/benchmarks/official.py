"""An imported official Refusion-size model restoring one image: the official test procedure vs refusion's.

The model goes the way a user's does: an official-format checkpoint (a bare state dict, as the
official code saves it) and a deshadow-style option file, through ``import_official`` into a
pipeline folder, then ``load_pipeline``. The same pipeline, weights and image then run

- ``official_procedure``: what the official test script does, 100 posterior steps in float32
  (refusion's ``posterior`` sampler is the official update, pinned to the official vectors in
  tests/test_samplers.py; the official code itself is not run here);
- ``refusion_mr_sde_10`` / ``refusion_mr_ode_5``: refusion's fast samplers;
- ``student_k1`` / ``student_k2``: a distilled student (``refusion distill``) at its K steps: the teacher's
  network run by ``mr_ode`` K times. Its speed does not depend on its weights, so the imported network
  itself times it; what a student's weights change is quality (docs/distillation.md).

Both image sizes (128x128 and 256x256) run in one call (``--smoke``: one 32x32 image, the small network).

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
            "refusion_mr_ode_5": ("mr_ode", 5), "student_k2": ("mr_ode", 2), "student_k1": ("mr_ode", 1)}


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


def _time_variants(pipe, size: int, repeats: int) -> dict:
    """Seconds of every variant on one size x size image (the same weights and image for all)."""
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))

    def run(sampler: str, steps: int):
        return pipe(lq, num_inference_steps=steps, sampler=sampler, output_type="pt", progress=False,
                    generator=torch.Generator().manual_seed(0)).images

    run("mr_sde", 1)                                     # warm-up: allocator, first-call costs
    timings = {}
    for name, (sampler, steps) in VARIANTS.items():
        seconds = perf.median_time(lambda s=sampler, n=steps: run(s, n), repeats=1 if steps >= 50 else repeats,
                                   warmup=0)
        timings[name] = {"sampler": sampler, "steps": steps, "nfe": steps, "seconds": seconds,
                         "seconds_per_nfe": seconds / steps}
    return timings


def _factors(timings: dict) -> dict:
    """Each variant against the official procedure: speedup = NFE ratio x per-NFE ratio."""
    base = timings["official_procedure"]
    return {name: {"speedup": base["seconds"] / t["seconds"], "nfe_ratio": base["nfe"] / t["nfe"],
                   "per_nfe_ratio": base["seconds_per_nfe"] / t["seconds_per_nfe"]}
            for name, t in timings.items() if name != "official_procedure"}


def bench_official(state: dict) -> dict:
    sizes = [32] if state["smoke"] else [128, 256]
    full = not state["smoke"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipe, imported = imported_pipeline(Path(tmp), full)
        for size in sizes:
            timings = _time_variants(pipe, size, max(1, state["repeats"]))
            factors = _factors(timings)
            rows = [{"variant": n, "sampler": t["sampler"], "NFE": t["nfe"], "s / image": t["seconds"],
                     "s / NFE": t["seconds_per_nfe"], "speedup": factors.get(n, {}).get("speedup", 1.0)}
                    for n, t in timings.items()]
            print_table(f"imported {imported.network} ({imported.num_parameters:,} parameters), one {size}x{size} "
                        f"image, float32 [{perf.machine_info().get('cpu_capability', '?')}]", rows, list(rows[0]))
            results[str(size)] = {"variants": timings, "factors": factors}
    return {"image_sizes": sizes, "network": imported.network, "kwargs": imported.kwargs,
            "num_parameters": imported.num_parameters, "quickstart_size": not full,
            "network_config_small": None if full else QUICKSTART, "sizes": results,
            "note": "speedup = nfe_ratio x per_nfe_ratio; the official procedure runs refusion's posterior sampler "
                    "(the official update) with the same weights and image; a student is the same network at K "
                    "mr_ode steps (its weights do not change its speed)"}
