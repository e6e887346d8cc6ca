"""ConditionalNAFNet: the Refusion noise network (NAFNet U-Net + sinusoidal time embedding).

``forward(x_t, mu, t, cond=None)`` predicts the noise in ``x_t`` given the degraded image ``mu``
(the mean the IR-SDE reverts to) and the step ``t``. Every block modulates both halves with
shift/scale pairs computed from the time embedding; the LayerNorm keeps a gain only (eps 1e-5).
``NAFNoiseNetwork`` holds what the official task variants share with it (unconditional_nafnet.py,
bokeh_nafnet.py, stereo_nafnet.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .blocks import (
    GainLayerNorm2d,
    NAFBlock,
    SinusoidalPosEmb,
    gated_mlp,
    noise_network_input,
    time_steps,
)
from .capabilities import Capabilities
from .nafnet import NAFUNetStages, pad_to_multiple


class NAFNoiseNetwork(ModelMixin, ConfigMixin, NAFUNetStages):
    """What the IR-SDE NAFNet noise networks share (ConditionalNAFNet and its task variants).

    ``intro`` conv -> NAFNet stages run with the block arguments (time embedding, ...) -> ``ending``
    conv; zero padding bottom/right to a multiple of 2**len(enc_blk_nums), output cropped back.
    Time: sinusoidal embedding of dim ``width`` -> Linear(width, 8*width) -> SimpleGate ->
    Linear(4*width, 4*width), as ``time_mlp`` (sinusoid at index 0); with
    ``sinusoid_in_time_mlp = False`` the sinusoid is the separate ``sinu_pos_emb`` and ``time_mlp``
    holds the MLP alone (the bokeh network's keys). ``block`` is the NAFBlock class of the stages.
    """

    block: type[NAFBlock] = NAFBlock
    sinusoid_in_time_mlp = True
    conditioning = "degraded"         # what a call takes besides x_t and t (refusion.models.capabilities)

    def capabilities(self) -> Capabilities:
        return Capabilities(purpose="noise", conditioning=self.conditioning, multiple=self.padder_size,
                            channels=self.config.img_channel)

    def _build(self, in_channels: int, img_channel: int, width: int, middle_blk_num: int,
               enc_blk_nums: Sequence[int], dec_blk_nums: Sequence[int]) -> None:
        """intro (in_channels -> width), time MLP, stages of time-conditioned gain-LayerNorm blocks,
        ending (width -> img_channel)."""
        time_dim = 4 * width
        if self.sinusoid_in_time_mlp:
            self.time_mlp = nn.Sequential(SinusoidalPosEmb(width), *gated_mlp(width, time_dim))
        else:
            self.sinu_pos_emb = SinusoidalPosEmb(width)
            self.time_mlp = gated_mlp(width, time_dim)
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.build_stages(
            width, middle_blk_num, enc_blk_nums, dec_blk_nums,
            lambda c: self.block(c, time_emb_dim=time_dim, norm_layer=GainLayerNorm2d),
        )

    @staticmethod
    def embed(sinusoid: nn.Module, mlp: nn.Sequential, values, batch_size: int, dtype: torch.dtype,
              device: torch.device, name: str = "t") -> torch.Tensor:
        """``mlp(sinusoid(values))`` for a scalar (one row, broadcast over the batch) or (B,) ``values``;
        the sinusoid in float64 for float64 inputs and in float32 otherwise (see ``time_steps``)."""
        features = sinusoid(time_steps(values, batch_size, dtype, device, name=name))
        return mlp(features.to(mlp[0].weight.dtype))

    def embed_time(self, t, batch_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1, 4*width) for a scalar t (broadcast over the batch, as the official code does), else (B, 4*width)."""
        if not self.sinusoid_in_time_mlp:
            return self.embed(self.sinu_pos_emb, self.time_mlp, t, batch_size, dtype, device)
        return self.embed(self.time_mlp[0], self.time_mlp[1:], t, batch_size, dtype, device)

    def predict(self, x: torch.Tensor, *block_args, intro_skip: bool = False) -> torch.Tensor:
        """Pad, intro, stages (every block gets ``block_args``), [+ intro features], ending, crop."""
        h, w = x.shape[-2:]
        intro = self.intro(pad_to_multiple(x, self.padder_size))
        y = self.run_stages(intro, *block_args)
        if intro_skip:
            y = y + intro
        return self.ending(y)[..., :h, :w]


class ConditionalNAFNet(NAFNoiseNetwork):
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
        self._build(2 * img_channel + cond_channels, img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums)

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = noise_network_input(x_t, mu, cond, self.config.cond_channels)
        time_emb = self.embed_time(t, x_t.shape[0], x_t.dtype, x_t.device)
        return self.predict(x, time_emb, intro_skip=self.config.add_intro_skip)

    def local_pooling_probe_args(self, x: torch.Tensor) -> tuple:
        """Inputs of the training-size forward pass that fixes TLC windows (see nafnet.local_pooling)."""
        n_cond = self.config.cond_channels
        cond = x.new_zeros(x.shape[0], n_cond, *x.shape[2:]) if n_cond else None
        return (x, x, 0, cond)


class NAFNoiseVariant(NAFNoiseNetwork):
    """Base of the official task variants: the official constructor arguments and nothing else.

    A subclass sets ``intro_maps`` (image-sized maps the intro conv sees: 2 for cat([x_t - mu, mu])
    of one view, 1 for x alone), ``block`` and ``sinusoid_in_time_mlp``, and adds its own
    conditioning modules in :meth:`build_conditioning`. Defaults are the Refusion configuration.
    """

    intro_maps = 2

    @register_to_config
    def __init__(
        self,
        img_channel: int = 3,
        width: int = 64,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (1, 1, 1, 28),
        dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
    ):
        super().__init__()
        self._build(self.intro_maps * img_channel, img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums)
        self.build_conditioning(width)

    def build_conditioning(self, width: int) -> None:
        """Modules beyond the time embedding (none by default)."""
