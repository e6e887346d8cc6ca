"""Posterior samples in one call: ``sample_posterior(lq, model=..., num_samples=K)``.

A diffusion restorer draws one plausible restoration per run; K runs with different noise show
what the model is sure of (pixels that agree across samples) and what it invents (pixels that
vary). ``sample_posterior`` returns the K samples with their per-pixel mean and standard deviation.

The K samples run as one network batch per chunk of samples (refusion.inference.sample_chunks):
sample k equals ``refusion.sample(lq, ..., generator=generator[k])`` with the same other arguments,
whatever the chunking.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refusion.data.inputs import to_batch
from refusion.inference.color_fix import check_color_fix, fix_restored
from refusion.inference.loading import REGRESSOR_NAMES
from refusion.inference.pipeline import RefusionPipeline, load_pipeline, network_sample
from refusion.inference.sample_chunks import check_num_samples

__all__ = ["PosteriorSamples", "sample_posterior"]


@dataclass
class PosteriorSamples:
    """K posterior samples of B images and their per-pixel statistics, float32 tensors in [0, 1].

    ``samples``: (K, B, C, H, W), each clamped to [0, 1] as refusion.sample returns it;
    ``mean``: (B, C, H, W), the average over the K samples (the posterior mean estimate: smoother
    than any one sample, closer to the MSE-optimal restoration);
    ``std``: (B, C, H, W), the per-pixel, per-channel standard deviation over the K samples with
    ddof 0 (divided by K): the model's uncertainty, high where samples disagree.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]


def _pipeline(model: Any, scheduler, device) -> RefusionPipeline | None:
    """The RefusionPipeline that ``model`` names (None for a bare noise network), as refusion.sample uses it."""
    if model is None:
        raise ValueError("refusion.sample_posterior needs a model: pass model='runs/shadow' (an sde run or a saved "
                         "pipeline directory), a RefusionPipeline, or a noise network net(x_t, mu, t) with "
                         "scheduler=IRSDEScheduler(...)")
    if isinstance(model, (str, Path)):
        model = load_pipeline(model)
    if isinstance(model, torch.nn.Module) and type(model).__name__ in REGRESSOR_NAMES:
        raise ValueError(f"model is a {type(model).__name__} regressor: it restores deterministically and has no "
                         f"posterior to sample; use refusion.restore(lq, model=...)")
    if not isinstance(model, RefusionPipeline):
        return None
    if scheduler is not None:
        model = model.with_scheduler(scheduler)
    return model.to(device) if device is not None else model


def sample_posterior(
    lq: Any,
    model: Any = None,
    num_samples: int = 8,
    steps: int = 100,
    sampler: str | None = None,
    generator: Any = None,
    tile_size: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    *,
    chunk_size: int | None = None,
    scheduler=None,
    eta: float | None = None,
    tile_overlap: int = 32,
    latent: bool | None = None,
    cond: torch.Tensor | None = None,
    half: bool = False,
    lens_info: Any = None,
    self_ensemble: bool = False,
    color_fix: str | None = None,
) -> PosteriorSamples:
    """``num_samples`` posterior samples of ``lq`` with their mean and std (a PosteriorSamples).

    Every argument but ``num_samples``, ``generator`` and ``chunk_size`` is that of refusion.sample.
    (``self_ensemble``: every sample is an x8 self-ensemble; ``color_fix``: every sample is fixed
    toward the input before the mean and std are taken.)
    ``lq``: a tensor (C, H, W) / (B, C, H, W), a numpy array or a PIL image, read as refusion.sample
    reads it; the result is always float32 torch tensors (a batch axis even for one image: B = 1),
    on the input tensor's device, on the CPU for numpy and PIL inputs (statistics need more than
    8 bits; ``refusion.data.inputs.tensor_to_numpy`` / ``tensor_to_pil`` convert an image back).

    ``generator``: None (K generators seeded from torch's global RNG), one torch.Generator (K seeds
    drawn from it), or a list of K, one per sample: entry k is a generator or a list of B (one per
    image), exactly what refusion.sample takes, and ``samples[k]`` then equals
    ``refusion.sample(lq, ..., generator=generator[k])``. A list of another length is refused.

    ``chunk_size``: samples per network batch (chunk_size * B images at once); None picks it from
    the image (or tile) size and the device, see refusion.inference.sample_chunks.auto_chunk_size. Smaller
    chunks need less memory; the samples do not depend on it. A chunk that runs out of memory
    raises with that advice.

    Errors: num_samples < 1; num_samples > 1 where every sample would be equal (std zero): a
    DenoisingSDE, which starts from the degraded image itself, with a sampler that draws no noise (its
    ode, posterior with eta = 0); a regressor as ``model``. The IR-SDE's ode, mr_ode and eta-0 posterior
    samplers do sample: their start x_T = mu + lambda z is drawn.
    """
    check_num_samples(num_samples)
    check_color_fix(color_fix)
    pipe = _pipeline(model, scheduler, device)
    x, kind = to_batch(lq)
    batch = x.shape[0]
    if num_samples == 1 and isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError(f"generator is a list of {len(generator)} entries but num_samples=1: pass one "
                             f"generator per sample")
        generator = generator[0]      # sample 0's generator, in the one-sample call's own form
    if pipe is not None:
        images = pipe(x, num_inference_steps=steps, sampler=sampler, eta=eta, generator=generator, output_type="pt",
                      tile_size=tile_size, tile_overlap=tile_overlap, latent=latent, cond=cond, progress=progress,
                      half=half, lens_info=lens_info, num_samples=num_samples, chunk_size=chunk_size,
                      self_ensemble=self_ensemble, color_fix=color_fix).images
        samples = images.reshape(batch, num_samples, *images.shape[1:]).transpose(0, 1)   # image-major -> (K, B)
    else:
        raw = network_sample(model, x, steps=steps, scheduler=scheduler, sampler=sampler, eta=eta,
                             generator=generator, tile_size=tile_size, tile_overlap=tile_overlap, latent=latent,
                             cond=cond, progress=progress, half=half, lens_info=lens_info, device=device,
                             num_samples=num_samples, chunk_size=chunk_size, self_ensemble=self_ensemble)
        raw = fix_restored(raw if num_samples > 1 else raw[None], x.to(raw.device), color_fix)
        samples = raw.clamp(0.0, 1.0)
    out_device = kind.device if kind.kind == "pt" else torch.device("cpu")
    samples = samples.to(device=out_device, dtype=torch.float32).contiguous()
    var, mean = torch.var_mean(samples, dim=0, correction=0)
    return PosteriorSamples(samples=samples, mean=mean, std=var.sqrt())
