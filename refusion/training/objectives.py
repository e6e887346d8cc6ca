"""What differs per task: the training loss and the validation restoration.

Each objective is a plain function ``objective(model, batch, scheduler, train_cfg, *,
autoencoder=None) -> (loss, logs)``; ``batch`` holds ``gt``, ``lq`` (and ``cond``, or the bokeh
``lens_info``), ``train_cfg`` is the recipe's ``train`` section, ``logs`` a dict of floats for the
logger. The engine does not know which objective it runs.

- ``sde``: t ~ U{1..T}, x_t from the forward marginal; a noise-predicting network (official) is
  trained by comparing the reverse-SDE mean built from it with the optimal reverse state x*_{t-1}
  (IR-SDE's maximum-likelihood objective), a data-predicting one (``prediction_type: sample``) by
  L1 on x0. With an autoencoder (latent runs) LQ and GT are first encoded by
  the frozen autoencoder and the SDE runs on latents.
- ``regressor``: psnr / l1 / charbonnier / l1_fft on the network output; HINet's two stage outputs
  are each supervised and their losses summed (as in HINet).
- ``latent_autoencoder``: "latent replacement" training of the LatentUNet: reconstruct LQ and GT,
  decode the GT latent with the LQ skips into GT, plus 0.001 x a latent statistics regulariser
  (see :func:`latent_statistics_penalty`).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from refusion.inference.network_calls import noise_call
from refusion.models.capabilities import GENERIC_NOISE, capabilities_of
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.training.distillation import distill_objective
from refusion.training.losses import CharbonnierLoss, FFTLoss, L1Loss, MatchingLoss, PSNRLoss

LATENT_REGULARISER_WEIGHT = 0.001
# a noise network that declares nothing, trained with the DenoisingSDE: net(x_t, t), as that SDE's networks
UNCONDITIONAL_NOISE = dataclasses.replace(GENERIC_NOISE, conditioning="none")


def _full(x: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (half-precision network outputs under autocast), float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _batch_images(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return batch["gt"], batch["lq"], batch.get("cond")


@torch.no_grad()
def encode_latents(autoencoder: nn.Module, gt: torch.Tensor, lq: torch.Tensor):
    """Latents of GT and LQ and the LQ skips from a frozen autoencoder (latent SDE runs)."""
    latent_gt, _ = autoencoder.encode(gt)
    latent_lq, skips_lq = autoencoder.encode(lq)
    return latent_gt, latent_lq, skips_lq


def latent_grid(cond: torch.Tensor | None, latent: torch.Tensor) -> torch.Tensor | None:
    """Pixel-size conditioning maps on the latent grid, as the pipeline gives them (area average)."""
    if cond is None or cond.shape[-2:] == latent.shape[-2:]:
        return cond
    return torch.nn.functional.interpolate(cond, size=latent.shape[-2:], mode="area")


def sde_objective(model, batch, scheduler, train_cfg, *, autoencoder=None):
    """IR-SDE loss for the network's parameterisation (``scheduler.config.prediction_type``).

    ``epsilon`` (official): L(reverse_sde_mean(x_t, eps_hat, t), optimal_prev_sample(x_t, x0, t)),
    the maximum-likelihood "optimal path" objective. ``sample`` (data prediction): the network
    outputs x0 directly and the loss is L(x0_hat, x0) with the same weight at every t. The
    optimal-path loss of an x0 prediction would be that error times the posterior coefficient on
    x0, which vanishes at large t, where restoring from mu alone is the hard part; the uniform
    weight learns that part in far fewer iterations (the quickstart recipe uses it).
    """
    x0, mu, cond = _batch_images(batch)
    if autoencoder is not None:
        x0, mu, _ = encode_latents(autoencoder, x0, mu)
        cond = latent_grid(cond, mu)
    t = scheduler.sample_timesteps(x0.shape[0], device=x0.device)
    # drawn in the logical (N, C, H, W) order: the same noise whatever the images' memory layout
    noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    x_t = scheduler.add_noise(x0, noise, t, mu=mu).to(x0.dtype)
    call = noise_network(model, scheduler, lens_info=batch.get("lens_info"), batch=x0.shape[0], device=x0.device)
    output = call(x_t, mu, t, cond)
    if scheduler.config.prediction_type == "sample":
        loss = MatchingLoss(train_cfg.loss)(_full(output), _full(x0))
        return loss, {"loss": loss.item()}
    pred = scheduler.reverse_sde_mean(x_t, _full(output).to(x_t.dtype), t, mu=mu)
    target = scheduler.optimal_prev_sample(x_t, x0, t, mu=mu)
    loss = MatchingLoss(train_cfg.loss)(_full(pred), _full(target))
    return loss, {"loss": loss.item()}


def _regressor_loss(name: str, fft_weight: float):
    if name == "psnr":
        return PSNRLoss()
    if name == "l1":
        return L1Loss()
    if name == "charbonnier":
        return CharbonnierLoss()
    if name == "l1_fft":
        l1, fft = L1Loss(), FFTLoss()
        return lambda pred, target: l1(pred, target) + fft_weight * fft(pred, target)
    raise ValueError(f"train.loss={name!r} for a regressor; allowed: 'psnr', 'l1', 'charbonnier', 'l1_fft'")


def regressor_objective(model, batch, scheduler, train_cfg, *, autoencoder=None):
    """Deterministic restoration loss; every output of a multi-stage network is supervised."""
    gt, lq, cond = _batch_images(batch)
    criterion = _regressor_loss(train_cfg.loss, train_cfg.fft_loss_weight)
    outputs = model(lq) if cond is None else model(lq, cond)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    stage_losses = [criterion(_full(out), _full(gt)) for out in outputs]
    loss = torch.stack(stage_losses).sum()
    logs = {"loss": loss.item()}
    if len(stage_losses) > 1:
        logs.update({f"loss_stage{i + 1}": v.item() for i, v in enumerate(stage_losses)})
    return loss, logs


def latent_statistics_penalty(latent: torch.Tensor) -> torch.Tensor:
    """Keeps every latent channel near zero mean and unit standard deviation.

    ``mean_{b,c} [ m_bc^2 + (s_bc - 1)^2 ]`` with m, s the spatial mean / std of channel c of
    sample b. The SDE's stationary std lambda and max_sigma are chosen for images in [0, 1]; a latent
    of unit scale keeps the same noise levels meaningful, and the penalty stops the encoder from
    shrinking or inflating the latent to game the reconstruction terms.
    """
    flat = latent.float().flatten(2)
    mean, std = flat.mean(dim=2), flat.std(dim=2)
    return (mean**2 + (std - 1.0) ** 2).mean()


class LatentReplacement(nn.Module):
    """The autoencoder's training forward pass as ONE module call (so DDP sees a forward).

    Returns the reconstructions of LQ and GT, the GT decoded with the LQ skips, and both latents.
    """

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, lq: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        latent_lq, skips_lq = self.autoencoder.encode(lq)
        latent_gt, skips_gt = self.autoencoder.encode(gt)
        return {
            "rec_lq": self.autoencoder.decode(latent_lq, skips_lq),
            "rec_gt": self.autoencoder.decode(latent_gt, skips_gt),
            "replaced": self.autoencoder.decode(latent_gt, skips_lq),
            "latent_lq": latent_lq,
            "latent_gt": latent_gt,
        }


def latent_autoencoder_objective(model, batch, scheduler, train_cfg, *, autoencoder=None):
    """Latent replacement: L1 reconstructions + L1(decode(z_gt, skips_lq), gt) + 0.001 x stats."""
    gt, lq, _ = _batch_images(batch)
    out = model(lq, gt)
    l1 = L1Loss()
    rec = l1(out["rec_lq"].float(), lq.float()) + l1(out["rec_gt"].float(), gt.float())
    replaced = l1(out["replaced"].float(), gt.float())
    reg = latent_statistics_penalty(out["latent_lq"]) + latent_statistics_penalty(out["latent_gt"])
    loss = rec + replaced + LATENT_REGULARISER_WEIGHT * reg
    return loss, {"loss": loss.item(), "loss_rec": rec.item(), "loss_replace": replaced.item(),
                  "latent_reg": reg.item()}


OBJECTIVES = {
    "sde": sde_objective,
    "regressor": regressor_objective,
    "latent_autoencoder": latent_autoencoder_objective,
    "distill": distill_objective,
}


def training_module(task: str, model: nn.Module) -> nn.Module:
    """The module the engine wraps for (distributed) training; parameters are shared with model."""
    return LatentReplacement(model) if task == "latent_autoencoder" else model


# ---------------------------------------------------------------------------------------------
# Validation: restore a batch of whole LQ images with the network being trained.


def noise_network(model, scheduler, *, lens_info=None, batch: int, device):
    """How training calls its noise network: the inference wrappers (refusion.inference.network_calls), chosen
    by what the network declares (the DenoisingSDE's networks net(x_t, t), the IR-SDE's net(x_t, mu, t) with
    cond maps, the bokeh network with the batch's (B, 3) lens information); a network that declares nothing
    is called as its scheduler's networks are."""
    default = UNCONDITIONAL_NOISE if isinstance(scheduler, DenoisingSDEScheduler) else GENERIC_NOISE
    return noise_call(model, capabilities_of(model, default), name=type(model).__name__, lens_info=lens_info,
                      batch=batch, device=device)


@torch.no_grad()
def sample_sde(model, scheduler, mu, *, num_inference_steps: int, cond=None, lens_info=None, generator=None):
    """Reverse-time sampling from the scheduler's initial state (x_T = mu + lambda z for the IR-SDE,
    the noisy image itself at the start timestep for the DenoisingSDE) with its update rule."""
    if isinstance(scheduler, DenoisingSDEScheduler):   # at most the steps from the start timestep
        num_inference_steps = min(num_inference_steps, scheduler.start_timestep)
    scheduler.set_timesteps(num_inference_steps, device=mu.device)
    x = scheduler.initial_sample(mu, generator=generator).to(mu.dtype)
    return reverse_steps(model, scheduler, x, mu, cond=cond, lens_info=lens_info, generator=generator)


def reverse_steps(model, scheduler, x, mu, *, cond=None, lens_info=None, generator=None):
    """The scheduler's steps (its timesteps already set) from the state ``x``: validation's sampling, and the
    distilled student's solver (refusion.training.distillation), differentiable when ``model`` is."""
    call = noise_network(model, scheduler, lens_info=lens_info, batch=mu.shape[0], device=mu.device)
    for t in scheduler.timesteps:
        t_batch = t.expand(mu.shape[0]).to(mu.device)
        noise_pred = call(x, mu, t_batch, cond)
        x = scheduler.step(noise_pred.float(), t, x, mu=mu, generator=generator).prev_sample.to(mu.dtype)
    return x


@torch.no_grad()
def restore_batch(task: str, model, batch, scheduler=None, *, num_inference_steps: int = 100,
                  generator=None, autoencoder=None) -> torch.Tensor:
    """The restored image for validation: sampling (sde), one pass (regressor), or for the
    autoencoder the GT latent decoded with the LQ skips (the latent-replacement reconstruction)."""
    gt, lq, cond = _batch_images(batch)
    if task == "regressor":
        out = model(lq) if cond is None else model(lq, cond)
        return out[-1] if isinstance(out, (list, tuple)) else out
    if task == "latent_autoencoder":
        # what the latent pipeline relies on: a clean latent decoded with the LQ image's skips
        latent_gt, _ = model.encode(gt)
        return model.decode(latent_gt, model.encode(lq)[1])
    lens_info = batch.get("lens_info")
    if autoencoder is None:
        return sample_sde(model, scheduler, lq, num_inference_steps=num_inference_steps,
                          cond=cond, lens_info=lens_info, generator=generator)
    latent_lq, skips_lq = autoencoder.encode(lq)
    latent = sample_sde(model, scheduler, latent_lq, num_inference_steps=num_inference_steps,
                        cond=latent_grid(cond, latent_lq), lens_info=lens_info, generator=generator)
    return autoencoder.decode(latent, skips_lq)
