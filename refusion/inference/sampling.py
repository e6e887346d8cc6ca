"""``refusion.sample``: restore an image with the reverse SDE in one call.

Takes a tensor, numpy array or PIL image and returns the same kind; the model is anything
refusion.load_model takes (a run or saved pipeline folder, an imported official folder, an official
checkpoint with its options, a RefusionPipeline, a loaded model, or a noise network with its scheduler).
The restoration itself is refusion.inference.restorer.restore_image.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from refusion.data.inputs import from_batch, to_batch
from refusion.inference.model import LoadedModel, load_model
from refusion.inference.restorer import StepCallback, restore_image
from refusion.inference.settings import RestoreSettings
from refusion.models.capabilities import declares_capabilities

__all__ = ["sample", "sde_model"]

Generator = torch.Generator | Sequence[torch.Generator] | None

_NO_MODEL_SDE = (
    "needs a model: pass model='runs/shadow' (a training run directory of an sde run, a directory written by "
    "RefusionPipeline.save_pretrained or an imported official folder), refusion.load_model(...), a "
    "RefusionPipeline, or a noise network net(x_t, mu, t) with scheduler=IRSDEScheduler(...). Example: "
    "refusion.sample(lq, steps=10, model='runs/shadow')")


def sde_model(model: Any, *, scheduler=None, device=None, caller: str = "refusion.sample") -> LoadedModel:
    """The loaded SDE model ``model`` names (a plain callable is a noise network: default IRSDEScheduler);
    ValueError for no model or a regressor."""
    from refusion.schedulers.ir_sde import IRSDEScheduler

    if model is None:
        raise ValueError(f"{caller} {_NO_MODEL_SDE}")
    if scheduler is None and callable(model) and not isinstance(model, LoadedModel) and not hasattr(model, "unet") \
            and not declares_capabilities(model):
        scheduler = IRSDEScheduler()      # a network that declares nothing: a noise network, as this call says
    loaded = load_model(model, scheduler=scheduler, device=device)
    if loaded.kind != "sde":
        raise ValueError(f"model is a {type(loaded.network).__name__} regressor: it restores deterministically and "
                         f"has no posterior to sample; use refusion.restore(lq, model=...) for regressors, "
                         f"refusion.sample for sde models")
    return loaded


def sample(
    lq: Any,
    steps: int | None = None,
    model: Any = None,
    sampler: str | None = None,
    generator: Generator = None,
    tile_size: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    *,
    scheduler=None,
    eta: float | None = None,
    tile_overlap: int = 32,
    latent: bool | None = None,
    cond: torch.Tensor | None = None,
    half: bool = False,
    lens_info: Any = None,
    self_ensemble: bool = False,
    color_fix: str | None = None,
    callback: StepCallback | None = None,
) -> Any:
    """Restore ``lq`` with the reverse IR-SDE; returns the same kind as ``lq`` (tensor/numpy/PIL).

    ``model``: anything refusion.load_model takes, or any noise network ``net(x_t, mu, t)`` (then
    ``scheduler`` or a default IRSDEScheduler()). ``steps`` None: the sampler's documented step count
    (10 for mr_ode / mr_sde, every trained step for sde / ode / posterior). ``lens_info``: the bokeh
    network's lens information; ``self_ensemble``, ``color_fix``: the x8 self-ensemble and the colour fix
    (see RefusionPipeline.__call__). ``callback(done, total)`` is called after every sampling step.
    """
    settings = RestoreSettings(sampler=sampler, steps=steps, eta=eta, generator=generator, tile=tile_size,
                               overlap=tile_overlap, latent=latent, cond=cond, half=half, lens_info=lens_info,
                               self_ensemble=self_ensemble, color_fix=color_fix)
    loaded = sde_model(model, scheduler=scheduler, device=device)
    _, kind = to_batch(lq)
    out = restore_image(loaded, lq, settings, progress=progress, callback=callback)
    return from_batch(out.image, kind)
