"""UnconditionalUNet: the IR-SDE ResBlock U-Net of the Gaussian-denoising task.

The official ``codes/config/denoising-sde/models/modules/DenoisingUNet_arch.py`` differs from the
deshadow ConditionalUNet in two places: it sees the noisy state alone (``net(x, t)``, the 7x7 init
conv takes ``in_nc`` channels, no mu), and its middle attention is softmax self-attention over all
pixels (official ``Attention``: keys ``mid_attn.fn.fn.to_qkv``, ``mid_attn.fn.fn.to_out``, no
LayerNorm after the output conv) instead of the linear attention. The other keys are shared.
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config

from .conditional_unet import NoiseUNet
from .unet_blocks import SelfAttention
# diffusers' pipeline loader looks its base classes up in the component's own module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401


class UnconditionalUNet(NoiseUNet):
    """Noise predictor ``eps_hat = net(x, t)``; ``x`` reflect-padded to a multiple of 2^depth and cropped back.

    Args:
        in_nc: channels of x.
        out_nc: channels of the predicted noise.
        nf: width of the first level; level i has nf * 2^i channels.
        depth: number of levels.
    """

    conditioning = "none"

    @register_to_config
    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, depth: int = 4):
        super().__init__()
        self._build(in_nc, out_nc, nf, depth, SelfAttention)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Predict the noise in x; ``t`` is an int, a float, a 0-d or a per-sample (B,) tensor."""
        channels = self.config.in_nc
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"UnconditionalUNet: x must be (B, {channels}, H, W) (in_nc={channels}), got {tuple(x.shape)}")
        return self.predict(x, t)
