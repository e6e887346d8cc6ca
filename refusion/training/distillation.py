"""Few-step students of an IR-SDE teacher (task ``distill``).

The student starts from the teacher's weights and learns to land, in K network evaluations of the
``mr_ode`` solver, where the teacher's deterministic solver (``mr_ode`` or the probability-flow ``ode``)
lands in N evaluations **from the same terminal state** x_T = mu + lambda z. The target is a function
of (mu, z), so the student stays a sampler: another z gives another plausible image, and posterior means
and stds keep their meaning (a student trained toward E[x0 | mu] would collapse to a regressor).

Loss: distance (``train.loss`` l1 / l2) between the student's endpoint and the teacher's, plus
``lpips_weight`` x LPIPS between them and ``gt_weight`` x L1 to the ground truth. The teacher's
endpoint is computed on the fly for each batch (no cache to invalidate): with the teacher's N = 10
steps it costs N forward passes without gradients against the student's K with them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["load_teacher", "weights_sha256", "solve", "distillation_target", "distill_objective",
           "check_teacher_matches", "write_student_card"]


def weights_sha256(net: torch.nn.Module) -> str:
    """sha256 of a network's state dict (names, dtypes, shapes and bytes in key order): the same weights
    give the same digest whichever folder layout they were saved in."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_teacher(cfg, device, *, source: str = "distill.teacher"):
    """The teacher as refusion.load_model loads it, checked: an IR-SDE model with a noise network
    net(x_t, mu, t) (on pixels, or on the latents of its autoencoder). ValueError naming ``source`` otherwise."""
    from refusion.inference.model import load_model
    from refusion.schedulers.ir_sde import IRSDEScheduler

    teacher = load_model(cfg.teacher, device=device)
    what = f"{source} {cfg.teacher!r}"
    if teacher.kind != "sde":
        raise ValueError(f"{what} is a {type(teacher.network).__name__} regressor: a teacher is an IR-SDE model "
                         f"(a trained sde run, a saved pipeline or an imported official Refusion / IR-SDE model)")
    if not isinstance(teacher.scheduler, IRSDEScheduler):
        raise ValueError(f"{what} runs a {type(teacher.scheduler).__name__}: only IR-SDE teachers (x_T = mu + "
                         f"lambda z) are distilled")
    upscale = teacher.pipeline.config.get("lq_upscale", 1) if teacher.pipeline is not None else 1
    if upscale != 1:
        raise ValueError(f"{what} upsamples its LQ input x{upscale} before sampling (an official SR model): a "
                         f"student restores at the size it is trained at and keeps no upsampling; distil a "
                         f"teacher trained on LQ images already at the GT size (refusion dataset --task sr)")
    if teacher.capabilities.conditioning != "degraded":
        raise ValueError(f"{what} has a {teacher.capabilities.conditioning}-conditioned network "
                         f"({type(teacher.network).__name__}); students are distilled from net(x_t, mu, t) teachers")
    teacher.network.eval().requires_grad_(False)
    return teacher


def check_teacher_matches(cfg, scheduler_cfg, teacher, autoencoder=None) -> None:
    """ValueError when the recipe's scheduler is not the teacher's SDE, its autoencoder (``latent``) not the
    teacher's, or the teacher's weights are not those the recipe was written for (a student resumed with another
    teacher)."""
    digest = weights_sha256(teacher.network) if cfg.teacher_sha256 is not None else None
    if digest != cfg.teacher_sha256:
        raise ValueError(f"distill.teacher {cfg.teacher!r}: its weights have sha256 {digest} "
                         f"but the recipe was written for {cfg.teacher_sha256}: a student continues with the teacher "
                         f"it started with (write a new recipe with `refusion distill` for another teacher)")
    _check_same_autoencoder(cfg, teacher.autoencoder, autoencoder)
    theirs = teacher.scheduler.config
    for key in ("max_sigma", "num_train_timesteps", "schedule", "eps", "prediction_type"):
        ours = getattr(scheduler_cfg, key)
        if ours is not None and ours != theirs[key]:
            raise ValueError(f"scheduler.{key} is {ours!r} but the teacher's SDE has {theirs[key]!r}: the student "
                             f"samples the teacher's SDE")
    if cfg.teacher_steps > theirs["num_train_timesteps"]:
        raise ValueError(f"distill.teacher_steps ({cfg.teacher_steps}) exceeds the teacher's "
                         f"{theirs['num_train_timesteps']} trained steps")


def _check_same_autoencoder(cfg, theirs, ours) -> None:
    """A latent teacher's student samples the same latent space: the recipe's autoencoder is the teacher's."""
    if theirs is None and ours is None:
        return
    if theirs is None:
        raise ValueError(f"latent: distill.teacher {cfg.teacher!r} runs on pixels; remove the latent section")
    if ours is None:
        raise ValueError(f"latent: distill.teacher {cfg.teacher!r} is a latent model; the student needs its "
                         f"autoencoder (latent.autoencoder: the teacher's autoencoder/ folder or run)")
    ours_sha, theirs_sha = weights_sha256(ours), weights_sha256(theirs)
    if ours_sha != theirs_sha:
        raise ValueError(f"latent.autoencoder: its weights (sha256 {ours_sha}) are not those of the "
                         f"teacher's autoencoder ({theirs_sha}): the student samples the teacher's latents")


def solve(net, scheduler, x_T: torch.Tensor, mu: torch.Tensor, steps: int, cond: torch.Tensor | None = None):
    """The deterministic solver of ``scheduler`` (its sampler must draw no noise) from ``x_T`` in ``steps``
    network evaluations; differentiable when ``net`` is (the student's gradient flows through every step)."""
    from refusion.training.objectives import reverse_steps     # objectives imports this module

    if scheduler.is_stochastic:
        raise ValueError(f"the {scheduler.config.sampler!r} sampler draws noise; distillation copies a "
                         f"deterministic solver (mr_ode, ode)")
    scheduler.set_timesteps(steps, device=mu.device)
    return reverse_steps(net, scheduler, x_T, mu, cond=cond)


@torch.no_grad()
def distillation_target(teacher_net, teacher_scheduler, cfg, mu, x_T, cond=None) -> torch.Tensor:
    """The teacher's endpoint from ``x_T``: its ``teacher_solver`` at ``teacher_steps`` steps."""
    scheduler = type(teacher_scheduler).from_config(teacher_scheduler.config, sampler=cfg.teacher_solver)
    return solve(teacher_net, scheduler, x_T, mu, cfg.teacher_steps, cond)


def distill_objective(model, batch, scheduler, train_cfg, *, autoencoder=None, teacher, distill):
    """The student's loss for one batch: x_T drawn from torch's RNG (seeded per process, saved in checkpoints),
    the teacher's endpoint from it, the student's K-step endpoint from the same x_T. With an autoencoder (a
    latent teacher) both solvers run on the latents of the LQ image and the endpoints are compared there; the
    LPIPS and ground-truth terms compare the images decoded with the LQ image's skips."""
    from refusion.training.losses import MatchingLoss
    from refusion.training.objectives import encode_latents, latent_grid

    gt, mu, cond = batch["gt"], batch["lq"], batch.get("cond")
    decode = None
    if autoencoder is not None:
        _, mu, skips = encode_latents(autoencoder, gt, mu)
        cond = latent_grid(cond, mu)
        decode = lambda latent: autoencoder.decode(latent, skips)   # noqa: E731
    x_T = scheduler.initial_sample(mu)
    target = distillation_target(teacher.network, teacher.scheduler, distill, mu, x_T, cond)
    student = type(scheduler).from_config(scheduler.config, sampler="mr_ode")
    pred = solve(model, student, x_T, mu, distill.student_steps, cond)
    matching = MatchingLoss(train_cfg.loss)(pred, target)
    loss, logs = matching, {"teacher": float(matching.detach())}
    if decode is not None and (distill.lpips_weight or distill.gt_weight):
        pred, target = decode(pred), decode(target)
    if distill.lpips_weight:
        from refusion.evaluation.metrics import get_lpips_model

        perceptual = get_lpips_model("alex", pred.device)(pred.clamp(0, 1) * 2 - 1, target.clamp(0, 1) * 2 - 1).mean()
        loss, logs["lpips"] = loss + distill.lpips_weight * perceptual, float(perceptual.detach())
    if distill.gt_weight:
        to_gt = (pred - gt).abs().mean()
        loss, logs["gt"] = loss + distill.gt_weight * to_gt, float(to_gt.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs


def write_student_card(run_dir: Path, recipe, teacher_sha: str) -> None:
    """README.md of a student run: the teacher (path and sha256), K, the solver it copies, the data."""
    cfg, data = recipe.distill, recipe.data.train
    latent = "" if recipe.latent is None else (f"\n- **Latent**: both solvers run on the latents of the teacher's "
                                               f"autoencoder `{recipe.latent.autoencoder}`, saved in autoencoder/")
    text = f"""# {recipe.name}: a {cfg.student_steps}-step student of an IR-SDE teacher

- **Teacher**: `{cfg.teacher}` (weights sha256 `{teacher_sha}`)
- **Copies**: the teacher's `{cfg.teacher_solver}` solver at {cfg.teacher_steps} steps, from the same terminal
  state x_T = mu + lambda z
- **Student**: `mr_ode` at **{cfg.student_steps} network evaluation(s)** (its default step count); another
  step count runs the same solver, which the student was not trained for
- **Loss**: {recipe.train.loss} to the teacher's endpoint, + {cfg.lpips_weight} x LPIPS, + {cfg.gt_weight} x L1 to
  the ground truth; {recipe.train.total_iters} iterations of batch {recipe.train.batch_size}
- **Trained on**: `{data.gt}` / `{data.lq}` (patches of {data.gt_size}){latent}

Restore: `refusion restore photos/ -o out/ --model {run_dir}` (a different `--seed` draws another sample).
"""
    (Path(run_dir) / "README.md").write_text(text, encoding="utf-8")
