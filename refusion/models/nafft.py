"""NAFFT-Net: NAFNet with frequency-domain filters on the encoder skips, ECA channel attention and
DO-Conv depthwise convolutions that fold into plain convolutions for inference.

Parts:
- FFTSkipBlock: rfft2 -> cat(real, imag) -> 1x1 conv -> ReLU -> 1x1 conv -> irfft2 on each encoder
  skip; ``residual`` adds the skip back (off = the reported model, whose skip path had none).
- EfficientChannelAttention (ECA): 1-D conv across the pooled channels, kernel size from the
  channel count (gamma 2, b 1); its sigmoid weights multiply the features.
- DOConv2d: depthwise over-parameterised convolution, a conv weight W composed with a per-input-
  channel depthwise kernel D (+ identity) at train time; ``fold()`` gives the equivalent nn.Conv2d.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from torch import nn

from .blocks import NAFBlock
from .nafnet import RegressorUNet


class FFTSkipBlock(nn.Module):
    """Learned 1x1 filtering of the real and imaginary parts of a feature map's 2-D spectrum.

    The spectrum uses norm="ortho" so its scale does not grow with the image size (the network
    sees training patches and full test images through the same weights).
    """

    def __init__(self, channels: int, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # FFTs have no half-precision CPU kernels and lose accuracy there: run them in float32
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        spec = torch.fft.rfft2(work, norm="ortho")
        y = self.conv2(self.act(self.conv1(torch.cat([spec.real, spec.imag], dim=1).to(self.conv1.weight.dtype))))
        real, imag = y.to(work.dtype).chunk(2, dim=1)
        out = torch.fft.irfft2(torch.complex(real, imag), s=(h, w), norm="ortho").to(x.dtype)
        return x + out if self.residual else out


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size: the odd number nearest above |(log2 C + b) / gamma|."""
    k = int(abs((math.log2(channels) + b) / gamma))
    return k if k % 2 else k + 1


class EfficientChannelAttention(nn.Module):
    """ECA weights: pool -> 1-D conv over channels -> sigmoid, shape (B, C, 1, 1) (per pixel under TLC)."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1):
        super().__init__()
        k = eca_kernel_size(channels, gamma, b)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x)
        n, c, h, w = pooled.shape
        y = self.conv(pooled.permute(0, 2, 3, 1).reshape(n * h * w, 1, c))
        return y.reshape(n, h, w, c).permute(0, 3, 1, 2).sigmoid()


class DOConv2d(nn.Module):
    """Depthwise over-parameterised convolution (DO-Conv, Cao et al. 2020).

    Weight used: W'[o, i, m] = sum_s (D[i_global, m, s] + I[m, s]) W[o, i, s] with W of shape
    (out, in/groups, d_mul) and D of shape (in, k*k, d_mul), zero-initialised so training starts
    from a plain convolution. Extra parameters only change the optimisation; ``fold()`` returns
    the nn.Conv2d computing the same function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        d_mul: int | None = None,
    ):
        super().__init__()
        taps = kernel_size * kernel_size
        d_mul = taps if d_mul is None else d_mul
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}")
        if d_mul < taps:
            raise ValueError(f"d_mul must be >= kernel_size**2 = {taps}, got {d_mul}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.groups = stride, padding, groups
        self.W = nn.Parameter(torch.empty(out_channels, in_channels // groups, d_mul))
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        self.D = nn.Parameter(torch.zeros(in_channels, taps, d_mul))
        self.register_buffer("D_identity", torch.eye(taps, d_mul), persistent=False)
        if bias:
            fan_in = in_channels // groups * taps
            self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)))
        else:
            self.register_parameter("bias", None)

    def composed_weight(self) -> torch.Tensor:
        g, k = self.groups, self.kernel_size
        d = (self.D + self.D_identity).reshape(g, self.in_channels // g, k * k, -1)
        w = self.W.reshape(g, self.out_channels // g, self.in_channels // g, -1)
        weight = torch.einsum("gims,gois->goim", d, w)
        return weight.reshape(self.out_channels, self.in_channels // g, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.composed_weight(), self.bias, self.stride, self.padding, 1, self.groups)

    def fold(self) -> nn.Conv2d:
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            groups=self.groups, bias=self.bias is not None,
        ).to(device=self.W.device, dtype=self.W.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.composed_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class NAFFTBlock(NAFBlock):
    """NAFBlock with ECA instead of SCA (key ``eca``) and, optionally, a DO-Conv depthwise conv."""

    attention_key = "eca"

    def __init__(
        self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0,
        do_conv: bool = True, eca_gamma: int = 2, eca_b: int = 1,
    ):
        # read by make_depthwise / make_attention during NAFBlock.__init__
        self.do_conv, self.eca_gamma, self.eca_b = do_conv, eca_gamma, eca_b
        super().__init__(c, dw_expand, ffn_expand, drop_out_rate)

    def make_depthwise(self, channels: int) -> nn.Module:
        if self.do_conv:
            return DOConv2d(channels, channels, 3, padding=1, groups=channels)
        return super().make_depthwise(channels)

    def make_attention(self, channels: int) -> nn.Module:
        return EfficientChannelAttention(channels, self.eca_gamma, self.eca_b)


class NAFFTNet(RegressorUNet):
    """NAFFT-Net image restorer: ``forward(x)`` -> restored image (NAFNet U-Net, global residual).

    ``fft_residual``: add the skip back around each FFT block (off = the reported model).
    ``do_conv``: DO-Conv depthwise convolutions; :meth:`fold` turns them into plain convolutions
    for inference and records ``do_conv=False`` so the folded model saves and reloads as such.
    """

    @register_to_config
    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        dw_expand: int = 2,
        ffn_expand: int = 2,
        drop_out_rate: float = 0.0,
        fft_residual: bool = False,
        do_conv: bool = True,
        eca_gamma: int = 2,
        eca_b: int = 1,
    ):
        super().__init__()
        self._build(
            img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums,
            lambda c: NAFFTBlock(c, dw_expand, ffn_expand, drop_out_rate, do_conv, eca_gamma, eca_b),
        )
        self.fft_blocks = nn.ModuleList(FFTSkipBlock(width * 2**level, fft_residual) for level in range(len(enc_blk_nums)))

    def skip_transform(self, level: int, skip: torch.Tensor) -> torch.Tensor:
        return self.fft_blocks[level](skip)

    def fold(self) -> "NAFFTNet":
        """Replace every DOConv2d by its folded nn.Conv2d (in place); returns self."""
        for name, module in list(self.named_modules()):
            if isinstance(module, DOConv2d):
                parent_name, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent_name), child, module.fold())
        # do_conv=False rebuilds exactly the folded layout; it is no longer a default value either
        defaults = [k for k in self.config.get("_use_default_values", []) if k != "do_conv"]
        self.register_to_config(do_conv=False, _use_default_values=defaults)
        return self
