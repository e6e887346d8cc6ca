"""The one restore path: :func:`restore_image` restores an image (or a batch, or a stereo pair stacked on
channels) with a loaded model (refusion.inference.model) and one settings object
(refusion.inference.settings).

``refusion.sample`` / ``restore`` / ``sample_posterior``, `refusion restore` (with and without
``--samples``), the app and `refusion evaluate` all call it: nothing else converts images for the
network or makes generators. :func:`check_settings` fills the model's defaults into the settings and
refuses, before any work, what the model cannot do; callers that restore many images call it once up
front to report a bad setting early, and restore_image calls it again (it is cheap).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from refusion.data.inputs import to_batch
from refusion.inference.allocator import tune_malloc_for
from refusion.inference.color_fix import apply_color_fix, fix_restored
from refusion.inference.ensemble import check_ensemble_network, ensemble_mean
from refusion.inference.model import LoadedModel
from refusion.inference.pipeline import StepCallback, sde_samples
from refusion.inference.precision import InferenceNetwork, check_finite, to_float32
from refusion.inference.sample_chunks import check_stochastic
from refusion.inference.settings import RestoreSettings, SettingsError
from refusion.inference.tiling import tiled_apply, validate_tiling

__all__ = ["Restoration", "restore_image", "check_settings", "StepCallback"]


@dataclass
class Restoration:
    """The result of one call, float32 tensors in [0, 1] on the model's device.

    ``image``: (B, C, H, W), the restoration; with K > 1 posterior samples their per-pixel mean.
    ``samples``: (K, B, C, H, W) or None; ``std``: (B, C, H, W) std over the samples (ddof 0) or None.
    """

    image: torch.Tensor
    samples: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def hwc(self, which: str = "image", index: int = 0) -> np.ndarray:
        """Image ``index`` of the batch of ``image`` / ``std`` as a float32 (H, W, C) numpy array."""
        tensor = getattr(self, which)
        return tensor[index].permute(1, 2, 0).float().cpu().numpy()


def _check_regressor(model: LoadedModel, s: RestoreSettings) -> RestoreSettings:
    name = type(model.network).__name__
    if s.samples > 1:
        raise SettingsError(f"samples (--samples): posterior samples need an SDE model; {name} is a regressor, which "
                            f"restores deterministically (one result, no posterior)")
    if s.lens_info is not None:
        raise SettingsError(f"lens_info (--lens-meta): lens information is only for bokeh models; {name} takes none")
    if s.latent:
        raise SettingsError(f"latent (--latent): {name} is a regressor; only latent SDE models have that path")
    tlc = model.defaults.tlc if s.tlc is None else s.tlc
    if tlc is True:
        if model.defaults.train_patch is None:
            raise SettingsError("tlc (--tlc): True needs the training patch size, which is only known for a run "
                                "directory (recipe data.train.gt_size); give it instead, e.g. tlc=256")
        tlc = model.defaults.train_patch
    # sampler, steps and eta have no meaning for one network pass: dropped (the command line says so)
    return s.replace(tlc=tlc, sampler=None, steps=None, eta=None)


def _check_lens(model: LoadedModel, s: RestoreSettings, lens_later: bool) -> None:
    name, lens = type(model.network).__name__, model.capabilities.conditioning == "lens"
    if lens and s.lens_info is None and not lens_later:
        raise SettingsError(f"lens_info (--lens-meta / --src-lens): {name} is a bokeh model; it needs the lens "
                            f"information of every image")
    if not lens and s.lens_info is not None:
        raise SettingsError(f"lens_info (--lens-meta / --src-lens): lens information is only for bokeh models; "
                            f"{name} takes none")


def _check_sde(model: LoadedModel, s: RestoreSettings, lens_later: bool) -> RestoreSettings:
    name = type(model.network).__name__
    sampler = s.sampler or model.defaults.sampler
    if sampler not in model.samplers:
        raise SettingsError(f"sampler (--sampler): {sampler!r} is not a sampler of {type(model.scheduler).__name__}; "
                            f"choose one of {', '.join(model.samplers)}")
    steps = s.steps or model.default_steps(sampler)
    if steps > model.full_steps:
        raise SettingsError(f"steps (--steps): {steps} asked for; the model has {model.full_steps} trained steps, "
                            f"choose at most that many")
    if s.tlc not in (None, False):
        raise SettingsError(f"tlc (--tlc): the test-time local converter is for regressors; {name} is a noise network")
    if s.self_ensemble:
        try:
            check_ensemble_network(model.network)
        except ValueError as exc:
            raise SettingsError(f"self_ensemble (--self-ensemble): {exc}") from None
    _check_lens(model, s, lens_later)
    overrides = {"sampler": sampler} | ({"eta": s.eta} if s.eta is not None else {})
    try:
        check_stochastic(type(model.scheduler).from_config(model.scheduler.config, **overrides), s.samples)
    except ValueError as exc:
        raise SettingsError(f"samples (--samples): {exc} (--sampler, --eta)") from None
    return s.replace(sampler=sampler, steps=steps, tlc=None)


def check_settings(model: LoadedModel, settings: RestoreSettings, *, lens_later: bool = False) -> RestoreSettings:
    """``settings`` with the model's defaults filled in (sampler, steps, TLC), or a SettingsError naming the
    keyword and flag for what this model cannot do. ``lens_later``: the lens information comes per image
    (the command line's lens table), so its absence here is not an error."""
    if model.kind == "regressor":
        return _check_regressor(model, settings)
    return _check_sde(model, settings, lens_later)


def _tlc_context(network, tlc):
    """The models' local-pooling (TLC) context for this network, or nothing when tlc is off."""
    if tlc is None or tlc is False:
        return contextlib.nullcontext()
    from refusion.models.nafnet import local_pooling

    size = (int(tlc), int(tlc)) if isinstance(tlc, int) else tuple(int(v) for v in tlc)
    return local_pooling(network, size)


def _regress(model: LoadedModel, x: torch.Tensor, s: RestoreSettings, progress: bool) -> torch.Tensor:
    """One deterministic pass (with TLC, tiles, the x8 self-ensemble, the half path), clamped to [0, 1]."""
    from refusion.models import final_output

    network, multiple = model.network, model.capabilities.multiple
    if s.self_ensemble:
        check_ensemble_network(network)
    if s.tile is not None:
        validate_tiling(s.tile, s.overlap, multiple)
    with _tlc_context(network, s.tlc):
        # channels_last inputs; half: bf16 (CPU) / fp16 (CUDA) channels_last weights cast once for the
        # whole image (after the TLC conversion, so the converted modules are the ones that run)
        net = InferenceNetwork(network, x.device, half=s.half)

        def run(tile: torch.Tensor) -> torch.Tensor:
            return to_float32(final_output(net(tile)))

        def whole(image: torch.Tensor) -> torch.Tensor:
            if s.tile:
                return tiled_apply(run, image, s.tile, s.overlap, multiple, progress=progress)
            return run(image)

        # self-ensemble: each transformed whole image is tiled on its own grid
        out = ensemble_mean(whole, [x]) if s.self_ensemble else whole(x)
        check_finite(out, f"the output of the {type(network).__name__} network", s.half)
    return apply_color_fix(out.clamp(0.0, 1.0), x, s.color_fix)


def _tqdm_steps(steps):
    from tqdm.auto import tqdm

    return tqdm(steps, desc="sampling", leave=False)


def _sample_callable(model: LoadedModel, x: torch.Tensor, s: RestoreSettings, progress: bool,
                     callback: StepCallback | None) -> torch.Tensor:
    """The SDE with a noise network that is a plain callable (no pipeline): no latent path, no SR upscaling."""
    if s.latent:
        raise SettingsError("latent (--latent): the latent path needs a pipeline with an autoencoder, not a bare "
                            "noise network")
    overrides = {k: v for k, v in (("sampler", s.sampler), ("eta", s.eta)) if v is not None}
    scheduler = type(model.scheduler).from_config(model.scheduler.config, **overrides)
    if s.tile is not None:
        validate_tiling(s.tile, s.overlap, model.capabilities.multiple)
    cond = None if s.cond is None else s.cond.to(x.device)
    out = sde_samples(model.network, scheduler, x, s.replace(cond=cond), generator=s.make_generator(x.device),
                      progress=_tqdm_steps if progress else (lambda steps: steps), callback=callback)
    return fix_restored(out, x, s.color_fix)


def restore_image(model: LoadedModel, image: Any, settings: RestoreSettings, *, progress: bool = False,
                  callback: StepCallback | None = None) -> Restoration:
    """Restore ``image`` (a tensor (C, H, W) / (B, C, H, W) in [0, 1], a numpy HWC array or a PIL image;
    a stereo model takes both views stacked on channels) with ``model`` and ``settings``.

    ``progress``: a step bar (SDE) or tile bar (regressors) on stderr; ``callback(done, total)`` after every
    sampling step of an SDE model (each chunk of posterior samples makes its own pass; a regressor reports
    (0, 1) before its pass and (1, 1) after it).
    """
    s = check_settings(model, settings)
    x = to_batch(image)[0]
    device = model.device if isinstance(model.network, torch.nn.Module) else x.device
    x = x.to(device)
    tune_malloc_for(device)
    with torch.inference_mode():
        if model.kind == "regressor":
            if callback is not None:
                callback(0, 1)
            out = _regress(model, x, s, progress)
            if callback is not None:
                callback(1, 1)
        elif model.pipeline is not None:
            out = model.pipeline.run(x, s, progress=progress, callback=callback)
        else:
            out = _sample_callable(model, x, s, progress, callback)
    # clamp outside inference mode: callers get ordinary tensors they may edit in place
    if s.samples == 1:
        return Restoration(image=out.clamp(0.0, 1.0))
    samples = out.clamp(0.0, 1.0).float()
    var, mean = torch.var_mean(samples, dim=0, correction=0)
    return Restoration(image=mean, samples=samples, std=var.sqrt())
