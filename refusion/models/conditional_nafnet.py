"""ConditionalNAFNet: the Refusion noise network (NAFNet U-Net + sinusoidal time embedding).

``forward(x_t, mu, t, cond=None)`` predicts the noise in ``x_t`` given the degraded image ``mu``
(the mean the IR-SDE reverts to) and the step ``t``. Every block modulates both halves with
shift/scale pairs computed from the time embedding; the LayerNorm keeps a gain only (eps 1e-5).
"""
from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .blocks import GainLayerNorm2d, NAFBlock, SimpleGate, SinusoidalPosEmb, noise_network_input
from .nafnet import NAFUNetStages, pad_to_multiple


class ConditionalNAFNet(ModelMixin, ConfigMixin, NAFUNetStages):
    """The IR-SDE / Refusion noise network, with the official state-dict keys.

    Input ``cat([x_t - mu, mu, cond])`` (``cond`` only when ``cond_channels > 0``: extra
    conditioning maps such as bokeh lens information or a stereo partner view, shape
    (B, cond_channels, H, W)); zero-padded bottom/right to a multiple of 2**len(enc_blk_nums) and
    cropped back; no output residual. Time: sinusoidal embedding of dim ``width`` ->
    Linear(width, 8*width) -> SimpleGate -> Linear(4*width, 4*width).

    ``add_intro_skip=True`` is the latent-dehazing variant (``ending(x + intro_out)``); same keys.
    Defaults are the Refusion configuration (width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1]).
    """

    @register_to_config
    def __init__(
        self,
        img_channel: int = 3,
        width: int = 64,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (1, 1, 1, 28),
        dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
        cond_channels: int = 0,
        add_intro_skip: bool = False,
    ):
        super().__init__()
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        time_dim = 4 * width
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(width),
            nn.Linear(width, 2 * time_dim),
            SimpleGate(),
            nn.Linear(time_dim, time_dim),
        )
        self.intro = nn.Conv2d(2 * img_channel + cond_channels, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.build_stages(
            width, middle_blk_num, enc_blk_nums, dec_blk_nums,
            lambda c: NAFBlock(c, time_emb_dim=time_dim, norm_layer=GainLayerNorm2d),
        )

    def embed_time(self, t, batch_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1, 4*width) for a scalar t (broadcast over the batch, as the official code does), else (B, 4*width)."""
        t = torch.as_tensor(t, device=device)
        if t.numel() == 1:
            t = t.reshape(1)
        elif t.shape != (batch_size,):
            raise ValueError(f"t must be a scalar or a ({batch_size},) tensor, got shape {tuple(t.shape)}")
        # the sinusoid runs in float64 for float64 inputs and in float32 otherwise (never in half precision)
        t = t.to(torch.float64 if dtype == torch.float64 else torch.float32)
        emb = self.time_mlp[0](t).to(self.time_mlp[1].weight.dtype)
        return self.time_mlp[1:](emb)

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x_t.shape[-2:]
        x = pad_to_multiple(noise_network_input(x_t, mu, cond, self.config.cond_channels), self.padder_size)
        time_emb = self.embed_time(t, x_t.shape[0], x_t.dtype, x_t.device)
        intro = self.intro(x)
        y = self.run_stages(intro, time_emb)
        if self.config.add_intro_skip:
            y = y + intro
        return self.ending(y)[..., :h, :w]

    def local_pooling_probe_args(self, x: torch.Tensor) -> tuple:
        """Inputs of the training-size forward pass that fixes TLC windows (see nafnet.local_pooling)."""
        n_cond = self.config.cond_channels
        cond = x.new_zeros(x.shape[0], n_cond, *x.shape[2:]) if n_cond else None
        return (x, x, 0, cond)
