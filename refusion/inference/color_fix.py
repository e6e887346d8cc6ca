"""Colour fix: give a restored image the colours of the degraded one (as DiffBIR and SUPIR offer it).

Diffusion restorers keep the structure of the input but can drift in colour (a tint, a brightness
shift) that the degraded image did not have. Two corrections, both per channel:

- ``"adain"``: adaptive instance normalisation. Each channel of the output is shifted and scaled
  so that its mean and standard deviation over the image are those of the reference channel:
  ``(out - mean_out) * std_ref / std_out + mean_ref``. The statistics are taken over H x W for each
  image of the batch and each channel, in float64; the standard deviation is the population one
  (the ratio ``std_ref / std_out`` is the same for the unbiased one). A flat output channel
  (std 0) has no contrast to scale: it becomes the reference's mean.
- ``"wavelet"``: the output's high frequencies on the reference's low frequencies,
  ``high(out) + low(ref)``, with DiffBIR's ``wavelet_reconstruction`` decomposition: ``levels`` = 5
  repeated blurs by the 3x3 binomial kernel ``[1, 2, 1]^T [1, 2, 1] / 16`` at dilation 1, 2, 4, 8,
  16 (an "a trous" wavelet), replicate padding at the borders; ``low`` is the image after the last
  blur and ``high`` the sum of what each blur removed, so ``high(x) + low(x) == x``. The low band
  holds structures larger than about 32 pixels: colour casts and brightness, not texture.

The reference is the degraded image as the pipeline sees it (after an SR model's bicubic
upscaling, so it has the output's size). Images may have any channel count: a grey (1-channel)
image is corrected on its one channel, a stereo pair (6 channels) channel by channel; output and
reference must have the same shape, so a grey input with a colour output is an error (convert the
input to RGB first). ``color_fix=None`` switches the fix off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["COLOR_FIXES", "WAVELET_LEVELS", "check_color_fix", "apply_color_fix", "fix_restored", "adain_color_fix",
           "wavelet_color_fix", "wavelet_decomposition"]

COLOR_FIXES = ("adain", "wavelet")
WAVELET_LEVELS = 5          # DiffBIR's: the coarsest blur has dilation 16, the low band is above ~32 pixels
_BINOMIAL = torch.tensor([1.0, 2.0, 1.0])


def check_color_fix(method) -> str | None:
    """``method`` if it names a colour fix (or is None: off); ValueError listing the allowed values."""
    if method is None or method in COLOR_FIXES:
        return method
    raise ValueError(f"color_fix must be None (off) or one of {', '.join(map(repr, COLOR_FIXES))}, got {method!r}")


def apply_color_fix(output: torch.Tensor, reference: torch.Tensor, method: str | None) -> torch.Tensor:
    """``output`` with the colour fix ``method`` toward ``reference`` (``None``: ``output`` unchanged)."""
    method = check_color_fix(method)
    if method is None:
        return output
    return adain_color_fix(output, reference) if method == "adain" else wavelet_color_fix(output, reference)


def _check_pair(output: torch.Tensor, reference: torch.Tensor) -> None:
    for name, x in (("output", output), ("reference", reference)):
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
            raise ValueError(f"color fix: the {name} must be a float tensor (C, H, W) or (B, C, H, W), got "
                             f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
    if output.shape == reference.shape:
        return
    if output.dim() == reference.dim() and output.shape[-3] != reference.shape[-3]:
        raise ValueError(f"color fix: the output has {output.shape[-3]} channels but the degraded input has "
                         f"{reference.shape[-3]} (e.g. a grey input with a colour output); the fix works channel by "
                         f"channel and needs the same channels: give the input with {output.shape[-3]} channels "
                         f"or switch color_fix off")
    raise ValueError(f"color fix: the output {tuple(output.shape)} and the degraded input {tuple(reference.shape)} "
                     f"differ in shape; the fix needs the input at the output's size")


def adain_color_fix(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each channel of ``output`` with the mean and standard deviation of ``reference``'s (module doc)."""
    _check_pair(output, reference)
    (out_mean, out_std), (ref_mean, ref_std) = _channel_stats(output), _channel_stats(reference)
    scale = torch.where(out_std > 0, ref_std / out_std.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.zeros_like(out_std))
    # one affine map per channel, applied in the image's dtype: no float64 copy of a large image
    shift = ref_mean - out_mean * scale
    return output * scale.to(output.dtype) + shift.to(output.dtype)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean and population std over H x W of every channel (keepdim), summed in float64."""
    dims = (-2, -1)
    mean = x.mean(dims, keepdim=True, dtype=torch.float64)
    var = (x - mean.to(x.dtype)).square().mean(dims, keepdim=True, dtype=torch.float64)
    return mean, var.sqrt()


def _blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """One level: the binomial 3x3 kernel at ``dilation``, per channel, replicate-padded (DiffBIR's wavelet_blur)."""
    channels = image.shape[1]
    kernel = (_BINOMIAL[:, None] * _BINOMIAL[None, :] / 16.0).to(image)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel.expand(channels, 1, 3, 3), groups=channels, dilation=dilation)


def wavelet_decomposition(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) of a (B, C, H, W) or (C, H, W) image: ``low`` after ``levels`` blurs, ``high = image - low``."""
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")
    x = image if image.dim() == 4 else image[None]
    high = torch.zeros_like(x)
    for level in range(levels):
        low = _blur(x, 2 ** level)
        high += x - low
        x = low
    return (high, low) if image.dim() == 4 else (high[0], low[0])


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """``high(output) + low(reference)``: the output's detail on the reference's colours (module doc)."""
    _check_pair(output, reference)
    high, _ = wavelet_decomposition(output, levels)
    _, low = wavelet_decomposition(reference, levels)
    return high + low


def fix_restored(restored: torch.Tensor, reference: torch.Tensor, method: str | None) -> torch.Tensor:
    """The pipeline's colour fix: ``restored`` (B, C, H, W), or (K, B, C, H, W) samples of each image,
    clamped to [0, 1] and fixed toward ``reference`` (B, C, H, W); unchanged when ``method`` is None."""
    if check_color_fix(method) is None:
        return restored
    clamped = restored.clamp(0.0, 1.0)
    if restored.dim() == reference.dim() + 1:      # every sample toward its image
        return torch.stack([apply_color_fix(sample, reference, method) for sample in clamped])
    return apply_color_fix(clamped, reference, method)
