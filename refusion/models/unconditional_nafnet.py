"""UnconditionalNAFNet: the NAFNet noise network of the IR-SDE Gaussian-denoising task.

The official ``codes/config/denoising-sde/models/modules/DenoisingNAFNet_arch.py`` sees the noisy
state alone: ``net(x, t)``, the intro conv takes ``img_channel`` channels and there is no mu (the
denoising SDE reverts to zero mean). Everything else, keys included, is ConditionalNAFNet.
"""
from __future__ import annotations

import torch

from .conditional_nafnet import NAFNoiseVariant
# diffusers' pipeline loader looks its base classes up in the component's own module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401


class UnconditionalNAFNet(NAFNoiseVariant):
    """Noise predictor ``eps_hat = net(x, t)`` with the official argument names and state-dict keys.

    Constructor: ``img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums`` (NAFNoiseVariant).
    Inputs of any size: zero-padded bottom/right to a multiple of 2**len(enc_blk_nums) and cropped
    back; ``t`` is an int, a float, a 0-d or a (B,) tensor.
    """

    intro_maps = 1
    conditioning = "none"

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        channels = self.config.img_channel
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"UnconditionalNAFNet: x must be (B, {channels}, H, W) (img_channel={channels}), "
                             f"got {tuple(x.shape)}")
        return self.predict(x, self.embed_time(t, x.shape[0], x.dtype, x.device))

    def local_pooling_probe_args(self, x: torch.Tensor) -> tuple:
        """Inputs of the training-size forward pass that fixes TLC windows (see nafnet.local_pooling)."""
        return (x, 0)
