"""Optimizers, the learning-rate schedule and EMA weights.

The learning rate is a pure function of the optimizer step (:func:`learning_rate`) set on the
param groups before every optimizer step. There is no scheduler object to prepare, so it cannot be
stepped once per process (accelerate steps a prepared scheduler ``num_processes`` times per
optimizer step), and resuming needs no scheduler state.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

OPTIMIZERS = ("lion", "adamw", "adam")
LR_SCHEDULES = ("cosine", "constant")


def build_optimizer(params, optimizer_cfg) -> torch.optim.Optimizer:
    """Lion (lion-pytorch), AdamW or Adam from the recipe's optimizer section."""
    name = optimizer_cfg.name
    kwargs = dict(lr=optimizer_cfg.lr, betas=tuple(optimizer_cfg.betas), weight_decay=optimizer_cfg.weight_decay)
    if name == "lion":
        from lion_pytorch import Lion

        return Lion(params, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if name == "adam":
        return torch.optim.Adam(params, **kwargs)
    raise ValueError(f"optimizer.name={name!r}; allowed: {', '.join(OPTIMIZERS)}")


def learning_rate(step: int, *, base_lr: float, total_steps: int, schedule: str = "cosine",
                  warmup_steps: int = 0, eta_min: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up from base_lr / warmup_steps to base_lr over ``warmup_steps`` steps, then either
    constant or cosine annealing from base_lr (first step after warm-up) towards eta_min at
    ``total_steps`` (as the official TrueCosineAnnealingLR with T_max = total_steps).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule.name={schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a network's weights: ema <- d * ema + (1 - d) * w.

    ``self.model`` is a frozen copy of the network holding the averaged weights; buffers are copied
    as they are. It is what validation and the run directory's model/ use when EMA is on.

    The decay warms up, d = min(decay, (1 + step) / (10 + step)): with a constant 0.999 the average
    still holds e^-3 = 5% of the random initialisation after 3000 steps, which measurably spoiled
    short runs (a 3000-step SDE: 21.85 dB with the EMA weights vs 25.12 dB with the raw ones). The
    decay depends only on the step, so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay}; must be in (0, 1) (0 disables EMA)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def to(self, device) -> "EMA":
        self.model.to(device)
        return self

    def decay_at(self, step: int) -> float:
        """The decay used by the update that completes optimizer step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for averaged, current in zip(self.model.parameters(), model.parameters()):
            averaged.lerp_(current.detach().to(averaged.dtype), weight)
        for averaged, current in zip(self.model.buffers(), model.buffers()):
            averaged.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().clone().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)
