"""Training losses of the toolkit.

Every loss takes ``(pred, target)`` tensors of shape (B, C, H, W) and returns a scalar tensor.

- :class:`PSNRLoss` is NAFNet's loss: ``10 * log10(mse + eps)`` per sample, averaged over the
  batch. It equals minus the PSNR (for images in [0, 1]), so it is NEGATIVE by design and decreases
  as the restoration improves (-30 means 30 dB).
- :class:`L1Loss`, :class:`CharbonnierLoss`: pixel losses.
- :class:`FFTLoss`: mean absolute difference of the 2-D Fourier transforms (NAFFT-Net), added to
  an L1 loss with a weight (0.05 in the report) by the regressor objective.
- :class:`MatchingLoss`: the IR-SDE loss between the predicted reverse-SDE mean and the optimal
  reverse state: element-wise l1 or l2, mean per sample, then mean over the batch (as the
  official ``MatchingLoss(is_weighted=False)``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PSNRLoss", "L1Loss", "CharbonnierLoss", "FFTLoss", "MatchingLoss", "LOSS_NAMES"]


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


class PSNRLoss(nn.Module):
    """Minus the PSNR: ``mean_b 10 * log10(mse_b + eps)`` (NAFNet; negative by design)."""

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-8):
        super().__init__()
        self.loss_weight = loss_weight
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(pred, target, "PSNRLoss")
        mse = _per_sample_mean((pred.float() - target.float()) ** 2)
        return self.loss_weight * (10.0 / math.log(10.0)) * torch.log(mse + self.eps).mean()


class L1Loss(nn.Module):
    """Mean absolute error."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(pred, target, "L1Loss")
        return (pred - target).abs().mean()


class CharbonnierLoss(nn.Module):
    """``mean sqrt((pred - target)^2 + eps^2)``: a smooth L1 (eps = 1e-3 as in HINet/MPRNet)."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(pred, target, "CharbonnierLoss")
        return torch.sqrt((pred - target) ** 2 + self.eps**2).mean()


class FFTLoss(nn.Module):
    """``mean |fft2(pred) - fft2(target)|`` over the two spatial axes (complex modulus).

    Computed in float32: FFTs are not available in half precision on every device.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(pred, target, "FFTLoss")
        diff = torch.fft.fft2(pred.float()) - torch.fft.fft2(target.float())
        return diff.abs().mean()


class MatchingLoss(nn.Module):
    """IR-SDE matching loss: element-wise l1 or l2, mean per sample, then mean over the batch."""

    def __init__(self, loss_type: str = "l1"):
        super().__init__()
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"MatchingLoss: loss_type={loss_type!r}; allowed: 'l1', 'l2'")
        self.loss_type = loss_type

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(pred, target, "MatchingLoss")
        diff = pred - target
        elementwise = diff.abs() if self.loss_type == "l1" else diff**2
        return _per_sample_mean(elementwise).mean()


LOSS_NAMES = {
    "sde": ("l1", "l2"),
    "regressor": ("psnr", "l1", "charbonnier", "l1_fft"),
    "latent_autoencoder": ("l1",),
    "distill": ("l1", "l2"),
}
