"""ConditionalUNet: the original IR-SDE noise network (ResBlock U-Net with time embedding).

Input cat([x_t - mu, mu] (+ cond)), reflect-padded at the bottom/right to a multiple of 2^depth;
every level has two time-modulated ResBlocks and a linear attention; the output (the predicted
noise, no residual) is cropped back. State-dict keys are the official ones
(``codes/config/deshadow/models/modules/DenoisingUNet_arch.py`` of image-restoration-sde; the
deblurring, deraining, inpainting and sisr copies are byte-identical). ``NoiseUNet`` is the body it
shares with the unconditional denoising network (unconditional_unet.py).
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .capabilities import Capabilities
from .blocks import SinusoidalPosEmb, noise_network_input, time_steps
from .unet_blocks import (
    LinearAttention,
    ResBlock,
    attention_layer,
    default_conv,
    downsample,
    pad_to_multiple,
    upsample,
)


class NoiseUNet(ModelMixin, ConfigMixin):
    """The IR-SDE ResBlock U-Net on an already assembled input: ``predict(x, t)``."""

    conditioning = "degraded"         # what a call takes besides x_t and t (refusion.models.capabilities)

    def capabilities(self) -> Capabilities:
        return Capabilities(purpose="noise", conditioning=self.conditioning, multiple=2 ** self.depth,
                            channels=self.config.in_nc)

    def _build(self, in_channels: int, out_nc: int, nf: int, depth: int, mid_attention: type[nn.Module]) -> None:
        owner = type(self).__name__
        for name, value in (("in_nc", in_channels), ("out_nc", out_nc), ("nf", nf), ("depth", depth)):
            if int(value) < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
        self.depth = depth
        time_dim = nf * 4

        self.init_conv = default_conv(in_channels, nf, 7)
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(nf), nn.Linear(nf, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(depth):
            dim_in, dim_out = nf * 2**i, nf * 2 ** (i + 1)
            last = i == depth - 1
            self.downs.append(nn.ModuleList([
                ResBlock(dim_in, dim_in, time_dim),
                ResBlock(dim_in, dim_in, time_dim),
                attention_layer(dim_in),
                default_conv(dim_in, dim_out) if last else downsample(dim_in, dim_out),
            ]))
            self.ups.insert(0, nn.ModuleList([
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                attention_layer(dim_out),
                default_conv(dim_out, dim_in) if i == 0 else upsample(dim_out, dim_in),
            ]))

        mid_dim = nf * 2**depth
        self.mid_block1 = ResBlock(mid_dim, mid_dim, time_dim)
        self.mid_attn = attention_layer(mid_dim, mid_attention)
        self.mid_block2 = ResBlock(mid_dim, mid_dim, time_dim)
        self.final_res_block = ResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def embed_time(self, t, batch_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1, 4*nf) for a scalar t (broadcast over the batch), else (B, 4*nf); the sinusoid runs in
        float64 for float64 inputs (a float32 one costs a float64 network ~1e-9) and float32 otherwise."""
        emb = self.time_mlp[0](time_steps(t, batch_size, dtype, device))
        return self.time_mlp[1:](emb.to(self.time_mlp[1].weight.dtype))

    def predict(self, x: torch.Tensor, t) -> torch.Tensor:
        """Reflect-pad ``x`` to a multiple of 2^depth, run the U-Net at step ``t``, crop back."""
        h, w = x.shape[-2:]
        emb = self.embed_time(t, x.shape[0], x.dtype, x.device)
        x = self.init_conv(pad_to_multiple(x, 2**self.depth))
        x_init = x

        skips = []
        for block1, block2, attn, down in self.downs:
            x = block1(x, emb)
            skips.append(x)
            x = attn(block2(x, emb))
            skips.append(x)
            x = down(x)

        x = self.mid_block2(self.mid_attn(self.mid_block1(x, emb)), emb)

        for block1, block2, attn, up in self.ups:
            x = block1(torch.cat([x, skips.pop()], dim=1), emb)
            x = attn(block2(torch.cat([x, skips.pop()], dim=1), emb))
            x = up(x)

        x = self.final_res_block(torch.cat([x, x_init], dim=1), emb)
        return self.final_conv(x)[..., :h, :w]


class ConditionalUNet(NoiseUNet):
    """Noise predictor eps_hat = net(x_t, mu, t) of the IR-SDE (Luo et al., ICML 2023).

    Args:
        in_nc: channels of x_t and of mu (the network sees 2 * in_nc + cond_channels channels).
        out_nc: channels of the predicted noise.
        nf: width of the first level; level i has nf * 2^i channels.
        depth: number of levels (inputs are padded to a multiple of 2^depth).
        cond_channels: extra conditioning channels passed as ``cond`` (e.g. lens information);
            0 gives the official network.
    """

    @register_to_config
    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, depth: int = 4, cond_channels: int = 0):
        super().__init__()
        if cond_channels < 0:
            raise ValueError(f"ConditionalUNet: cond_channels must be >= 0, got {cond_channels}")
        if int(in_nc) < 1:
            raise ValueError(f"ConditionalUNet: in_nc must be >= 1, got {in_nc}")
        self.cond_channels = cond_channels
        self._build(in_nc * 2 + cond_channels, out_nc, nf, depth, LinearAttention)

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in x_t; ``t`` is an int, a float, a 0-d or a per-sample (B,) tensor."""
        x = noise_network_input(x_t, mu, cond, self.cond_channels, owner="ConditionalUNet")
        return self.predict(x, t)
