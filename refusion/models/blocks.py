"""Building blocks shared by the networks: channel LayerNorms, SimpleGate, time embedding.

Every block is written with plain tensor ops (no custom autograd Function) so that autograd,
fp16/bf16 autocast, torch.compile and ONNX export all work on them.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW tensor (NAFNet's, keys weight/bias)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class GainLayerNorm2d(nn.Module):
    """Gain-only channel LayerNorm of the IR-SDE networks (key ``g``, shape (1, C, 1, 1)).

    The official code switches eps to 1e-3 for non-float32 inputs; we keep 1e-5 for every dtype so
    float64 and bf16 runs compute the same function as float32.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them (NAFNet's activation-free gate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a (B,) time vector -> (B, dim): [sin, cos]."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


def as_time_vector(t, batch_size: int, device: torch.device) -> torch.Tensor:
    """Accept an int, a float, a 0-d or (B,) tensor and return a float (B,) time vector."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch_size)
    t = t.reshape(-1)
    if t.shape[0] == 1 and batch_size != 1:
        t = t.expand(batch_size)
    if t.shape[0] != batch_size:
        raise ValueError(f"t has {t.shape[0]} entries but the batch has {batch_size} samples")
    return t.float()
