"""The NaN/Inf checks of inference outputs catch a single bad pixel, not only a wholly non-finite result.

A numerical failure (a float16 overflow, a corrupt weight feeding one channel) usually spoils a few
pixels; clamping to [0, 1] afterwards would turn them into plausible-looking values (Inf -> 1) or
leave NaN in a saved image, so each check must fire when *any* value is non-finite. Each of the three
checked outputs gets one NaN or one Inf among otherwise ordinary values.
"""
from __future__ import annotations

import pytest
import torch

from refusion.inference.pipeline import RefusionPipeline, sde_sample
from refusion.inference.restoration import restore
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.models.latent_unet import LatentUNet
from refusion.schedulers.ir_sde import IRSDEScheduler

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BAD_VALUES = [pytest.param(float("nan"), id="nan"), pytest.param(float("inf"), id="inf"),
              pytest.param(float("-inf"), id="-inf")]


def _spoil_one_pixel(out: torch.Tensor, value: float) -> torch.Tensor:
    out = out.clone()
    out[0, 1, 2, 3] = value
    return out


class OnePixelRegressor(torch.nn.Module):
    """A regressor whose output is ordinary (half the input) except one value."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return _spoil_one_pixel(x * self.scale, self.value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_a_regressor_output_with_one_non_finite_pixel_raises(value):
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="the output of the OnePixelRegressor network holds NaN or Inf"):
        restore(lq, model=OnePixelRegressor(value), progress=False)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_a_final_sde_state_with_one_non_finite_pixel_raises(value):
    # The noise network's outputs are all finite (zeros whatever it is given), so the per-step check of
    # the network stays quiet; one non-finite value of mu stays in that pixel of the state through every
    # step (the scheduler's arithmetic is elementwise), and only the check of the final state can see it.
    def zero_noise(x_t, mu, t):
        return torch.zeros_like(x_t)

    mu = _spoil_one_pixel(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)), value)
    with pytest.raises(FloatingPointError, match=r"the sampled image \(final SDE state\) holds NaN or Inf"):
        sde_sample(zero_noise, IRSDEScheduler(num_train_timesteps=10, sampler="ode"), mu, num_inference_steps=3)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_a_decoded_latent_image_with_one_non_finite_pixel_raises(value, monkeypatch):
    torch.manual_seed(0)
    ae = LatentUNet(ch=4, ch_mult=[1, 2, 2, 2], embed_dim=4).eval()
    unet = ConditionalNAFNet(img_channel=4, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    decode = ae.decode
    monkeypatch.setattr(ae, "decode", lambda *args: _spoil_one_pixel(decode(*args), value))
    pipe = RefusionPipeline(unet=unet, scheduler=IRSDEScheduler(num_train_timesteps=10, sampler="ode"),
                            autoencoder=ae)
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with pytest.raises(FloatingPointError, match="the autoencoder's decoded image holds NaN or Inf"):
        pipe(lq, num_inference_steps=2, latent=True, output_type="pt", progress=False)
