"""Building blocks shared by the networks: channel LayerNorms, SimpleGate, channel attentions,
NAFBlock (optionally time-conditioned) and its Baseline variant, sinusoidal time embedding, the
input of the conditional noise networks.

Every block is written with plain tensor ops (no custom autograd Function) so that autograd,
fp16/bf16 autocast, torch.compile and ONNX export all work on them. Attribute names follow the
official NAFNet / IR-SDE code so that official state dicts load without any key mapping.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _channel_layer_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    # F.layer_norm over the last axis of the NHWC view: one fused kernel forward and backward
    # (about 7x faster than mean/var written out on CPU), and autocast runs it in float32.
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps)
    return y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW tensor (NAFNet's, keys weight/bias)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_layer_norm(x, self.weight, self.bias, self.eps)


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
        return _channel_layer_norm(x, self.g.view(-1), None, self.eps)


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them (NAFNet's activation-free gate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


def simplified_channel_attention(channels: int) -> nn.Sequential:
    """NAFNet's SCA: global average pool -> 1x1 conv; the block multiplies its input by it."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))


def channel_attention(channels: int, reduction: int = 2) -> nn.Sequential:
    """Squeeze-and-excitation channel attention of NAFNet's Baseline (pool, reduce, ReLU, expand, sigmoid)."""
    hidden = channels // reduction
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
        nn.Sigmoid(),
    )


class NAFBlock(nn.Module):
    """NAFNet block: LN -> 1x1 -> 3x3 depthwise -> gate -> channel attention -> 1x1 -> x + beta*y,
    then LN -> 1x1 -> gate -> 1x1 -> x + gamma*y.

    With ``time_emb_dim`` the block is the IR-SDE one: ``mlp`` (SimpleGate, Linear(time_emb_dim/2,
    4c)) maps the time embedding to shift/scale pairs applied after each LayerNorm as
    ``LN(x) * (1 + scale) + shift``, and ``forward(x, time_emb)`` needs the embedding.

    Subclasses change one part each (gate, attention, depthwise conv) through the ``make_*``
    methods; ``attention_key`` is the attribute (and state-dict) name of the attention and
    ``time_mlp_key`` that of the time projection. Blocks with other conditioning compute their own
    shift/scale pairs and call :meth:`modulated`.
    """

    attention_key = "sca"
    time_mlp_key = "mlp"
    gate_halves_channels = True

    def __init__(
        self,
        c: int,
        dw_expand: int = 2,
        ffn_expand: int = 2,
        drop_out_rate: float = 0.0,
        time_emb_dim: int | None = None,
        norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
    ):
        super().__init__()
        if time_emb_dim is not None and time_emb_dim % 2:
            raise ValueError(f"time_emb_dim must be even (SimpleGate halves it), got {time_emb_dim}")
        time_mlp = nn.Sequential(SimpleGate(), nn.Linear(time_emb_dim // 2, 4 * c)) if time_emb_dim else None
        setattr(self, self.time_mlp_key, time_mlp)

        dw_channel = c * dw_expand
        gated_dw = dw_channel // 2 if self.gate_halves_channels else dw_channel
        gated_ffn = ffn_expand * c // 2 if self.gate_halves_channels else ffn_expand * c
        self.conv1 = nn.Conv2d(c, dw_channel, 1)
        self.conv2 = self.make_depthwise(dw_channel)
        self.conv3 = nn.Conv2d(gated_dw, c, 1)
        setattr(self, self.attention_key, self.make_attention(gated_dw))
        self.sg = self.make_gate()
        self.conv4 = nn.Conv2d(c, ffn_expand * c, 1)
        self.conv5 = nn.Conv2d(gated_ffn, c, 1)
        self.norm1 = norm_layer(c)
        self.norm2 = norm_layer(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        # skip-init: the block starts as the identity
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def make_depthwise(self, channels: int) -> nn.Module:
        return nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def make_attention(self, channels: int) -> nn.Module:
        return simplified_channel_attention(channels)

    def make_gate(self) -> nn.Module:
        return SimpleGate()

    def attend_and_project(self, x: torch.Tensor) -> torch.Tensor:
        """``conv3(attention(x))``.

        For one image whose attention is one weight per channel (global pooling, not TLC's local
        pooling), scaling conv3's input channels equals scaling the columns of its weight: the
        per-channel product then costs a (C_out, C_in) multiply instead of a pass over the whole
        feature map (measured in docs/performance.md).
        """
        weights = getattr(self, self.attention_key)(x)
        conv = self.conv3
        if x.shape[0] == 1 and weights.shape[-2:] == (1, 1) and type(conv) is nn.Conv2d and conv.kernel_size == (1, 1):
            return F.conv2d(x, conv.weight * weights.reshape(1, -1, 1, 1).to(conv.weight.dtype), conv.bias)
        return conv(x * weights)

    def time_modulation(self, time_emb: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
        """(shift_att, scale_att, shift_ffn, scale_ffn), each (B, c, 1, 1); None for a block without time."""
        time_mlp = getattr(self, self.time_mlp_key)
        if time_mlp is None:
            return None
        if time_emb is None:
            raise ValueError(f"this {type(self).__name__} is time-conditioned: forward(x, time_emb) needs time_emb")
        return time_mlp(time_emb)[:, :, None, None].chunk(4, dim=1)

    def forward(self, inp: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.modulated(inp, self.time_modulation(time_emb))

    def modulated(
        self,
        inp: torch.Tensor,
        modulation: tuple[torch.Tensor, ...] | None = None,
        gate_modulation: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The block with ``LN(x) * (1 + scale) + shift`` before each half (``modulation`` as from
        :meth:`time_modulation`) and, with ``gate_modulation`` = (shift, scale), the feed-forward
        gate output modulated the same way before its last 1x1 conv (the bokeh network's lens
        conditioning)."""
        # addcmul: one pass over the feature map where ``a + b * c`` makes two (and a temporary)
        x = self.norm1(inp)
        if modulation is not None:
            shift_att, scale_att, shift_ffn, scale_ffn = modulation
            x = torch.addcmul(shift_att, x, scale_att + 1)
        x = self.sg(self.conv2(self.conv1(x)))
        x = self.dropout1(self.attend_and_project(x))
        y = torch.addcmul(inp, x, self.beta)

        x = self.norm2(y)
        if modulation is not None:
            x = torch.addcmul(shift_ffn, x, scale_ffn + 1)
        x = self.sg(self.conv4(x))
        if gate_modulation is not None:
            x = torch.addcmul(gate_modulation[0], x, gate_modulation[1] + 1)
        x = self.dropout2(self.conv5(x))
        return torch.addcmul(y, x, self.gamma)


class BaselineBlock(NAFBlock):
    """NAFNet's Baseline block: GELU instead of SimpleGate, SE channel attention (key ``se``)."""

    attention_key = "se"
    gate_halves_channels = False

    def __init__(self, c: int, dw_expand: int = 1, ffn_expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__(c, dw_expand, ffn_expand, drop_out_rate)

    def make_attention(self, channels: int) -> nn.Module:
        return channel_attention(channels)

    def make_gate(self) -> nn.Module:
        return nn.GELU()


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a (B,) time vector -> (B, dim): [sin, cos].

    Computed in the dtype of ``t`` when it is floating point (float32 otherwise), so a float64
    network embeds time in float64.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = t.dtype if t.is_floating_point() else torch.float32
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=dtype) * -scale)
        args = t.to(dtype)[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


def time_steps(t, batch_size: int, dtype: torch.dtype, device: torch.device, *, name: str = "t") -> torch.Tensor:
    """Diffusion steps (or any scalar conditioning) as the floating vector a sinusoidal embedding takes.

    ``t`` is an int, a float, a 0-d / 1-element tensor -> shape (1,), broadcast over the batch as in
    the official code; or a (batch_size,) tensor -> (batch_size,). The vector is float64 when
    ``dtype`` (the network's input dtype) is float64 and float32 otherwise: a float64 network embeds
    time without a float32 step, a half-precision one never runs the sinusoid in half precision.
    Python numbers are converted straight to that dtype (a float is not rounded to float32 first).
    """
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.numel() == 1:
        return t.reshape(1)
    if t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {t.numel()} entries (shape {tuple(t.shape)}) but the batch has {batch_size} samples; "
            f"give a scalar or a ({batch_size},) tensor"
        )
    return t


def gated_mlp(in_dim: int, dim: int) -> nn.Sequential:
    """Linear(in_dim, 2*dim) -> SimpleGate -> Linear(dim, dim): the embedding MLP of the NAFNet noise networks."""
    return nn.Sequential(nn.Linear(in_dim, 2 * dim), SimpleGate(), nn.Linear(dim, dim))


def noise_network_input(
    x_t: torch.Tensor, mu: torch.Tensor, cond: torch.Tensor | None, cond_channels: int, *, owner: str = ""
) -> torch.Tensor:
    """``cat([x_t - mu, mu] (+ cond))`` along channels: the input of the conditional noise networks.

    ``cond`` must be (B, cond_channels, H, W) when ``cond_channels > 0`` and absent otherwise;
    ``owner`` (a class name) prefixes the error messages.
    """
    prefix = f"{owner}: " if owner else ""
    if x_t.shape != mu.shape:
        raise ValueError(f"{prefix}x_t {tuple(x_t.shape)} and mu {tuple(mu.shape)} must have the same shape")
    parts = [x_t - mu, mu]
    if cond_channels:
        expected = (x_t.shape[0], cond_channels, *x_t.shape[2:])
        if cond is None or tuple(cond.shape) != expected:
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"{prefix}cond must have shape {expected} (cond_channels={cond_channels}), got {got}")
        parts.append(cond)
    elif cond is not None:
        raise ValueError(f"{prefix}cond was given but the network was built with cond_channels=0")
    return torch.cat(parts, dim=1)
