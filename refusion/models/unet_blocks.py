"""ResBlock U-Net parts shared by ConditionalUNet (IR-SDE noise network) and LatentUNet.

Module nesting and attribute names follow the official IR-SDE code so that official state dicts load
with their own keys: a ResBlock holds ``mlp.1`` (time projection), ``block1.proj``, ``block2.proj``,
``res_conv``; an attention layer is ``Residual(PreNorm(LinearAttention))`` whose keys read
``fn.norm.g``, ``fn.fn.to_qkv``, ``fn.fn.to_out.0``, ``fn.fn.to_out.1.g`` (``fn.fn.to_out`` for the
softmax ``SelfAttention`` of the unconditional denoising network).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import GainLayerNorm2d


def default_conv(dim_in: int, dim_out: int, kernel_size: int = 3, bias: bool = False) -> nn.Conv2d:
    """Same-size convolution without bias (the IR-SDE U-Nets' plain conv)."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


def downsample(dim_in: int, dim_out: int) -> nn.Conv2d:
    """Halve the resolution with a 4x4 stride-2 convolution."""
    return nn.Conv2d(dim_in, dim_out, 4, 2, 1)


def upsample(dim_in: int, dim_out: int) -> nn.Sequential:
    """Double the resolution: nearest-neighbour x2, then a 3x3 convolution (keys ``1.weight/bias``)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_in, dim_out, 3, 1, 1))


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad the bottom and right of an NCHW tensor so both sides are multiples of ``multiple``.

    Reflect padding needs the pad to be smaller than the side; tiny inputs fall back to replicate
    padding instead of failing (the official networks simply crash there).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    # the early return is skipped while exporting: a branch on the input size would be frozen
    # into the exported graph (ONNX), which then fails on sides that need padding
    if pad_h == 0 and pad_w == 0 and not torch.compiler.is_exporting():
        return x
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class Residual(nn.Module):
    """x + fn(x)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class PreNorm(nn.Module):
    """fn(LayerNorm(x)) with the gain-only channel LayerNorm."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = GainLayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class LinearAttention(nn.Module):
    """Linear (channel-context) attention: cost linear in the number of pixels.

    Queries are softmax-normalised over the head channels, keys over all pixels; the per-head
    context k v^T is a (dim_head x dim_head) matrix, so the layer sees the whole feature map.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), GainLayerNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention over all pixels (the official ``Attention``; keys
    ``to_qkv``, ``to_out``): quadratic in the number of pixels, so used at the deepest level only."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # (B, heads, pixels, dim_head); the default scale of the product is dim_head ** -0.5
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


def attention_layer(dim: int, attention: type[nn.Module] = LinearAttention) -> Residual:
    """Pre-normalised residual attention (linear by default), nested as in the official networks."""
    return Residual(PreNorm(dim, attention(dim)))


class Block(nn.Module):
    """3x3 conv, optional FiLM (x * (1 + scale) + shift), SiLU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = default_conv(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResBlock(nn.Module):
    """Two conv Blocks with a (1x1 conv when the width changes) shortcut.

    With ``time_emb_dim`` the time embedding is projected (SiLU, Linear) to a per-channel scale and
    shift applied after the first conv.
    """

    def __init__(self, dim_in: int, dim_out: int, time_emb_dim: int | None = None):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2)) if time_emb_dim else None
        self.block1 = Block(dim_in, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = default_conv(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        scale_shift = None
        if self.mlp is not None and time_emb is not None:
            scale_shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)
