"""Colour fix (refusion.inference.color_fix): AdaIN statistics, the wavelet bands, grey images, errors."""
from __future__ import annotations

import pytest
import torch

from refusion.inference.color_fix import (COLOR_FIXES, adain_color_fix, apply_color_fix, check_color_fix,
                                          wavelet_color_fix, wavelet_decomposition)

# the five blurs reach 1 + 2 + 4 + 8 + 16 = 31 pixels; a band of a band reaches twice as far
BORDER = 64


def _images(channels: int = 3, size: tuple[int, int] = (40, 56), batch: int = 2):
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(batch, channels, *size, generator=g)
    output = 0.6 * torch.rand(batch, channels, *size, generator=g) + 0.3      # other mean, other contrast
    return output, reference


def _checker(height: int, width: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((rows + cols) % 2 * 2 - 1).float()


@pytest.mark.parametrize("channels", [3, 1])
def test_adain_gives_each_channel_the_inputs_mean_and_std(channels):
    output, reference = _images(channels)
    fixed = adain_color_fix(output, reference)
    for stat in (lambda x: x.mean((-2, -1)), lambda x: x.std((-2, -1)), lambda x: x.std((-2, -1), correction=0)):
        torch.testing.assert_close(stat(fixed), stat(reference), atol=1e-5, rtol=0)
        assert not torch.allclose(stat(output), stat(reference), atol=1e-2)     # it had other statistics
    # only an affine map per channel: the output's structure is kept (correlation 1 with it)
    for b in range(output.shape[0]):
        for c in range(channels):
            corr = torch.corrcoef(torch.stack([fixed[b, c].flatten(), output[b, c].flatten()]))[0, 1]
            assert corr > 1 - 1e-5


def test_wavelet_keeps_the_outputs_detail_on_the_inputs_colours():
    height = width = 2 * BORDER + 32
    checker = _checker(height, width)
    cast_in = torch.tensor([0.2, 0.5, 0.7])[:, None, None]
    cast_out = torch.tensor([0.4, 0.3, 0.9])[:, None, None]
    reference = (cast_in + 0.05 * checker)[None]             # colours of the input, its own fine texture
    output = (cast_out + 0.15 * checker)[None]               # a colour cast, sharper texture
    fixed = wavelet_color_fix(output, reference)
    inner = (..., slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    high_fixed, low_fixed = wavelet_decomposition(fixed)
    high_out, low_out = wavelet_decomposition(output)
    high_ref, low_ref = wavelet_decomposition(reference)
    torch.testing.assert_close(low_fixed[inner], low_ref[inner], atol=1e-5, rtol=0)
    torch.testing.assert_close(high_fixed[inner], high_out[inner], atol=1e-5, rtol=0)
    assert (low_out - low_ref)[inner].abs().min() > 0.09      # the cast that was removed
    torch.testing.assert_close(fixed[inner], (cast_in + 0.15 * checker)[None][inner], atol=1e-5, rtol=0)


def test_wavelet_removes_a_colour_cast_from_a_natural_looking_image():
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, 4, 5, generator=g)
    scene = torch.nn.functional.interpolate(coarse, size=(96, 120), mode="bicubic", align_corners=False)
    detail = 0.1 * torch.rand(1, 3, 96, 120, generator=g)
    reference = scene + detail
    output = 0.8 * reference + torch.tensor([0.15, -0.05, 0.1])[None, :, None, None]   # tint and contrast drift
    fixed = wavelet_color_fix(output, reference)
    _, low_ref = wavelet_decomposition(reference)
    error_before = (wavelet_decomposition(output)[1] - low_ref).abs().mean()
    error_after = (wavelet_decomposition(fixed)[1] - low_ref).abs().mean()
    assert error_after < 0.2 * error_before       # what is left: the contrast change in the middle band
    high_out, _ = wavelet_decomposition(output)
    assert (wavelet_decomposition(fixed)[0] - high_out).abs().mean() < 0.1 * high_out.abs().mean()


def test_bands_add_up_to_the_image():
    image = _images()[1]
    high, low = wavelet_decomposition(image)
    torch.testing.assert_close(high + low, image, atol=1e-6, rtol=0)
    assert low.std() < image.std() and high.abs().mean() > 0


@pytest.mark.parametrize("method", COLOR_FIXES)
def test_identity_when_the_output_is_the_input(method):
    _, reference = _images()
    torch.testing.assert_close(apply_color_fix(reference.clone(), reference, method), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", COLOR_FIXES)
def test_a_grey_image_is_fixed_as_one_channel_of_a_colour_one(method):
    output, reference = _images(3)
    whole = apply_color_fix(output, reference, method)
    for c in range(3):      # per channel: a channel alone gives what it gets inside the colour image
        alone = apply_color_fix(output[:, c:c + 1], reference[:, c:c + 1], method)
        torch.testing.assert_close(alone, whole[:, c:c + 1], atol=1e-6, rtol=0)
    # (C, H, W) without a batch axis too
    torch.testing.assert_close(apply_color_fix(output[0], reference[0], method), whole[0], atol=1e-6, rtol=0)


def test_off_returns_the_output_itself():
    output, reference = _images()
    assert apply_color_fix(output, reference, None) is output


@pytest.mark.parametrize("value", ["AdaIN", "histogram", "", 1, True])
def test_unknown_method_lists_the_allowed_values(value):
    with pytest.raises(ValueError, match=r"color_fix must be None \(off\) or one of 'adain', 'wavelet'"):
        check_color_fix(value)
    output, reference = _images()
    with pytest.raises(ValueError, match="color_fix must be"):
        apply_color_fix(output, reference, value)


@pytest.mark.parametrize("method", COLOR_FIXES)
def test_grey_input_with_a_colour_output_and_size_mismatch_are_errors(method):
    output, reference = _images(3)
    with pytest.raises(ValueError, match="output has 3 channels but the degraded input has 1"):
        apply_color_fix(output, reference[:, :1], method)
    with pytest.raises(ValueError, match=r"differ in shape; the fix needs the input at the output's size"):
        apply_color_fix(output, reference[..., :20, :], method)
    with pytest.raises(ValueError, match="must be a float tensor"):
        apply_color_fix(output, reference.numpy(), method)
