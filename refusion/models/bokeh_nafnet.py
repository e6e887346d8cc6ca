"""BokehNAFNet: the Refusion noise network of the bokeh-effect task, conditioned on lens information.

The official ``codes/config/latent-bokeh/models/modules/DenoisingNAFNet_arch.py`` (NTIRE 2023 bokeh
rendering, run on the latent of the U-Net autoencoder) adds to ConditionalNAFNet a second embedding:
the source lens, the target lens and the disparity each get the sinusoidal embedding of the time
steps (dim ``width``, same frequencies), the three are concatenated and ``cam_mlp`` (Linear(3*width,
8*width) -> SimpleGate -> Linear(4*width, 4*width)) maps them to a camera embedding. Every block
projects it (``cam_mlp``: SimpleGate, Linear(2*width, 2c)) to a scale and shift of the
feed-forward gate output, ``x * (1 + scale) + shift`` before the last 1x1 conv; its time projection
is named ``time_mlp`` there (``mlp`` in ConditionalNAFNet). The network's ``time_mlp`` holds the MLP
alone (keys ``time_mlp.0``, ``time_mlp.2``), the sinusoid being a separate module.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import NAFBlock, SimpleGate, gated_mlp, noise_network_input, time_steps
from .conditional_nafnet import NAFNoiseVariant
# diffusers' pipeline loader looks its base classes up in the component's own module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

LENS_INFO = ("src_lens", "tgt_lens", "disparity")


class BokehNAFBlock(NAFBlock):
    """NAFBlock with ``time_mlp`` (time) and ``cam_mlp`` (lens) projections; ``forward(x, time_emb, cam_emb)``."""

    time_mlp_key = "time_mlp"

    def __init__(self, c: int, time_emb_dim: int, **kwargs):
        super().__init__(c, time_emb_dim=time_emb_dim, **kwargs)
        self.cam_mlp = nn.Sequential(SimpleGate(), nn.Linear(time_emb_dim // 2, 2 * c))

    def forward(self, inp: torch.Tensor, time_emb: torch.Tensor, cam_emb: torch.Tensor) -> torch.Tensor:
        cam_scale, cam_shift = self.cam_mlp(cam_emb)[:, :, None, None].chunk(2, dim=1)
        return self.modulated(inp, self.time_modulation(time_emb), (cam_shift, cam_scale))


class BokehNAFNet(NAFNoiseVariant):
    """Noise predictor ``eps_hat = net(x_t, mu, t, lens_info=[src_lens, tgt_lens, disparity])``.

    Constructor: ``img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums`` (NAFNoiseVariant).
    The input is ``cat([x_t - mu, mu])`` (intro: 2 * img_channel channels; the official bokeh setting
    runs on a 4-channel latent, ``img_channel=4``), zero-padded bottom/right to a multiple of
    2**len(enc_blk_nums) and cropped back. ``t`` and each lens value are a scalar (one embedding
    for the whole batch) or a (B,) tensor. Official argument names and state-dict keys.
    """

    block = BokehNAFBlock
    sinusoid_in_time_mlp = False
    conditioning = "lens"

    def build_conditioning(self, width: int) -> None:
        self.cam_mlp = gated_mlp(len(LENS_INFO) * width, 4 * width)

    def embed_lens(self, lens_info: Sequence, batch_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1 or B, 4*width) camera embedding of [src_lens, tgt_lens, disparity]."""
        if isinstance(lens_info, (str, bytes, torch.Tensor)) or len(lens_info) != len(LENS_INFO):
            got = type(lens_info).__name__ if isinstance(lens_info, (str, bytes, torch.Tensor)) else f"{len(lens_info)} items"
            raise ValueError(f"BokehNAFNet: lens_info must be a list [{', '.join(LENS_INFO)}] of scalars or "
                             f"({batch_size},) tensors, got {got}")
        features = [self.sinu_pos_emb(time_steps(value, batch_size, dtype, device, name=f"lens_info {name}"))
                    for value, name in zip(lens_info, LENS_INFO)]
        rows = max(f.shape[0] for f in features)
        features = torch.cat([f.expand(rows, -1) for f in features], dim=1)
        return self.cam_mlp(features.to(self.cam_mlp[0].weight.dtype))

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, t, lens_info: Sequence) -> torch.Tensor:
        x = noise_network_input(x_t, mu, None, 0, owner="BokehNAFNet")
        batch, dtype, device = x_t.shape[0], x_t.dtype, x_t.device
        return self.predict(x, self.embed_time(t, batch, dtype, device), self.embed_lens(lens_info, batch, dtype, device))

    def local_pooling_probe_args(self, x: torch.Tensor) -> tuple:
        """Inputs of the training-size forward pass that fixes TLC windows (see nafnet.local_pooling)."""
        return (x, x, 0, [0.0] * len(LENS_INFO))
