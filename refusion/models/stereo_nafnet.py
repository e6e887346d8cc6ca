"""StereoNAFNet: the Refusion noise network of the stereo super-resolution task.

The official ``codes/config/stereo-sr/models/modules/DenoisingNAFNet_arch.py`` restores a left and
a right view together: ``net(x_t, mu, t)`` with ``x_t`` and ``mu`` = cat([left, right], dim=1).
Each view becomes ``cat([x_t - mu, mu])`` of its own channels, the two are stacked on the batch
axis (left batch first), and after every NAFBlock a stereo cross-attention module (SCAM, key
``fusion``) exchanges information between the views along image rows. The output is the noise of
both views, cat([left, right], dim=1) again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import GainLayerNorm2d, NAFBlock, noise_network_input
from .conditional_nafnet import NAFNoiseVariant
# diffusers' pipeline loader looks its base classes up in the component's own module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

# SCAM attends on a bicubic 1/4 copy of the features and nearest-upsamples the result back; the
# copy is made with scale_factor (not a size), which sets the bicubic sampling grid as officially
ATTENTION_SCALE = 0.25


def _by_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, c, H, W) -> (B, H, W, c): one (W, c) matrix per image row."""
    return x.permute(0, 2, 3, 1)


class StereoCrossAttention(nn.Module):
    """SCAM (NAFSSR, Chu et al. 2022) on views stacked on the batch axis: [left; right].

    On bicubic 1/4-size copies: Q = proj1(LN(view)), V = proj2(view); for every image row the
    attention between left and right pixels softmax(Q_l Q_r^T / sqrt(c)) carries V_r to the left
    view and (transposed) V_l to the right one; the results, scaled per channel by ``beta``
    (to the left) and ``gamma`` (to the right), are nearest-upsampled and added to each view.
    """

    def __init__(self, c: int):
        super().__init__()
        self.scale = c**-0.5
        self.norm_l = GainLayerNorm2d(c)
        self.norm_r = GainLayerNorm2d(c)
        self.l_proj1 = nn.Conv2d(c, c, 1)
        self.r_proj1 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.l_proj2 = nn.Conv2d(c, c, 1)
        self.r_proj2 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=0)
        small_l = F.interpolate(left, scale_factor=ATTENTION_SCALE, mode="bicubic")
        small_r = F.interpolate(right, scale_factor=ATTENTION_SCALE, mode="bicubic")
        query_l, query_r = _by_rows(self.l_proj1(self.norm_l(small_l))), _by_rows(self.r_proj1(self.norm_r(small_r)))
        value_l, value_r = _by_rows(self.l_proj2(small_l)), _by_rows(self.r_proj2(small_r))

        attention = query_l @ query_r.transpose(-1, -2) * self.scale  # (B, H, W_left, W_right)
        to_left = (attention.softmax(dim=-1) @ value_r).permute(0, 3, 1, 2) * self.beta
        to_right = (attention.transpose(-1, -2).softmax(dim=-1) @ value_l).permute(0, 3, 1, 2) * self.gamma
        left = left + F.interpolate(to_left, size=left.shape[-2:])
        right = right + F.interpolate(to_right, size=right.shape[-2:])
        return torch.cat([left, right], dim=0)


class StereoNAFBlock(NAFBlock):
    """NAFBlock followed by the cross-view attention ``fusion``."""

    def __init__(self, c: int, **kwargs):
        super().__init__(c, **kwargs)
        self.fusion = StereoCrossAttention(c)

    def forward(self, inp: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.fusion(super().forward(inp, time_emb))


class StereoNAFNet(NAFNoiseVariant):
    """Noise predictor for a stereo pair, ``eps_hat = net(x_t, mu, t)``; official names and keys.

    Constructor: ``img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums`` (NAFNoiseVariant).
    ``x_t``, ``mu``: (B, 2 * img_channel, H, W), the left view's channels first. Inputs are
    zero-padded bottom/right to a multiple of 2**len(enc_blk_nums) and cropped back; the deepest
    features must keep at least 4 pixels per side for the 1/4-size attention, so H and W must be
    larger than 3 * 2**len(enc_blk_nums). ``t``: a scalar or a (B,) tensor (both views share it).
    """

    block = StereoNAFBlock
    conditioning = "stereo"

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, t) -> torch.Tensor:
        channels = 2 * self.config.img_channel
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise ValueError(f"StereoNAFNet: x_t must be (B, {channels}, H, W), the left and right views "
                             f"(img_channel={self.config.img_channel} each) concatenated, got {tuple(x_t.shape)}")
        if mu.shape != x_t.shape:
            raise ValueError(f"StereoNAFNet: x_t {tuple(x_t.shape)} and mu {tuple(mu.shape)} must have the same shape")
        smallest = 3 * self.padder_size + 1
        if min(x_t.shape[-2:]) < smallest:
            raise ValueError(f"StereoNAFNet: x_t is {tuple(x_t.shape[-2:])}; both sides must be >= {smallest} "
                             f"(the cross-view attention works on 1/4 of the deepest features)")
        views = [noise_network_input(x, m, None, 0, owner="StereoNAFNet") for x, m in zip(x_t.chunk(2, 1), mu.chunk(2, 1))]
        time_emb = self.embed_time(t, x_t.shape[0], x_t.dtype, x_t.device)
        # one row per sample (a scalar t gives one row for all), the same for both views; expand
        # instead of a branch on the row count keeps the batch size free in an exported graph
        time_emb = time_emb.expand(x_t.shape[0], -1).repeat(2, 1)
        out = self.predict(torch.cat(views, dim=0), time_emb)
        return torch.cat(out.chunk(2, dim=0), dim=1)

    def local_pooling_probe_args(self, x: torch.Tensor) -> tuple:
        """Inputs of the training-size forward pass that fixes TLC windows (see nafnet.local_pooling)."""
        pair = torch.cat([x, x], dim=1)
        return (pair, pair, 0)
