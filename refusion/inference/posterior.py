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
from typing import Any

import torch

from refusion.data.inputs import to_batch
from refusion.inference.restorer import restore_image
from refusion.inference.sample_chunks import check_num_samples
from refusion.inference.sampling import sde_model
from refusion.inference.settings import RestoreSettings

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


def sample_posterior(
    lq: Any,
    model: Any = None,
    num_samples: int = 8,
    steps: int | None = None,
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
    callback=None,
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
    settings = RestoreSettings(sampler=sampler, steps=steps, eta=eta, generator=generator, tile=tile_size,
                               overlap=tile_overlap, latent=latent, cond=cond, half=half, lens_info=lens_info,
                               samples=check_num_samples(num_samples), chunk_size=chunk_size,
                               self_ensemble=self_ensemble, color_fix=color_fix)
    loaded = sde_model(model, scheduler=scheduler, device=device, caller="refusion.sample_posterior")
    if num_samples == 1 and isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError(f"generator is a list of {len(generator)} entries but num_samples=1: pass one "
                             f"generator per sample")
        settings = settings.replace(generator=generator[0])   # sample 0's generator, in the one-sample call's form
    _, kind = to_batch(lq)
    out = restore_image(loaded, lq, settings, progress=progress, callback=callback)
    samples = out.image[None] if out.samples is None else out.samples
    out_device = kind.device if kind.kind == "pt" else torch.device("cpu")
    samples = samples.to(device=out_device, dtype=torch.float32).contiguous()
    var, mean = torch.var_mean(samples, dim=0, correction=0)
    return PosteriorSamples(samples=samples, mean=mean, std=var.sqrt())
