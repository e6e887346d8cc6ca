"""``refusion.restore``: one deterministic pass of a regressor (NAFNet, Baseline, HINet, NAFFT-Net).

Takes a tensor, numpy array or PIL image and returns the same kind (like ``refusion.sample``),
optionally tile by tile, with the test-time local converter (TLC) for networks with global
pooling, and with ``half=True`` at bfloat16 (CPU) / float16 (CUDA) channels_last weights
(refusion.inference.precision). A NaN/Inf output raises FloatingPointError. ``self_ensemble``
averages the 8 flips and rotations (refusion.inference.ensemble), ``color_fix`` gives the result
the input's colours (refusion.inference.color_fix).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from refusion.data.inputs import from_batch, to_batch
from refusion.inference.model import LoadedModel, load_model
from refusion.inference.restorer import restore_image
from refusion.inference.settings import RestoreSettings

__all__ = ["restore"]

_NO_MODEL_REGRESSOR = (
    "refusion.restore needs a model: pass model='runs/nafnet' (a training run directory of a regressor run "
    "or a saved model directory with config.json), or a network such as refusion.models.NAFNet(...). "
    "Example: refusion.restore(lq, model='runs/nafnet')")


def restore(
    lq: Any,
    model: Any = None,
    tile_size: int | None = None,
    tlc: bool | int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    *,
    tile_overlap: int = 32,
    half: bool = False,
    self_ensemble: bool = False,
    color_fix: str | None = None,
) -> Any:
    """Restore ``lq`` with a deterministic regressor (NAFNet, Baseline, HINet, NAFFT-Net).

    ``model``: a regressor run directory / saved model directory, or the network itself.
    ``tlc``: test-time local converter for networks with global pooling (NAFNet family): the
    global average pools become box means over 1.5 x the training patch; True reads the patch
    size from the run's recipe, an int or (H, W) gives it; None (default) uses the folder's
    inference.json (an imported official ...Local model has TLC on), False switches it off.
    ``half``: the network runs with bfloat16 (CPU) / float16 (CUDA) channels_last weights
    (refusion.inference.precision); the output is float32.
    ``self_ensemble``: the mean over the 8 flips and 90-degree rotations of the image of the network's
    output mapped back (exactly 8 network calls; with ``tile_size`` each transformed image is tiled,
    see refusion.inference.ensemble); refused for stereo networks.
    ``color_fix``: None (off), "adain" or "wavelet": the result gets the per-channel colour
    statistics / low frequencies of ``lq`` (refusion.inference.color_fix), then is clamped to [0, 1].
    Same input/output conventions as ``refusion.sample``.
    """
    if model is None:
        raise ValueError(_NO_MODEL_REGRESSOR)
    settings = RestoreSettings(tile=tile_size, overlap=tile_overlap, tlc=tlc, half=half, self_ensemble=self_ensemble,
                               color_fix=color_fix)
    if isinstance(model, DiffusionPipeline):
        raise ValueError(f"model is a {type(model).__name__} (an sde model); use refusion.sample(lq, model=...)")
    if not callable(model) and not isinstance(model, (str, Path, LoadedModel)):
        raise TypeError(f"model must be a path or a regressor network, got {type(model).__name__}. "
                        + _NO_MODEL_REGRESSOR)
    loaded = load_model(model, device=device)
    if loaded.kind != "regressor":
        where = f"{model} is" if isinstance(model, (str, Path)) else f"model is a {type(loaded.network).__name__},"
        raise ValueError(f"{where} an sde model; refusion.restore needs a regressor "
                         f"(use refusion.sample for sde models)")
    _, kind = to_batch(lq)
    return from_batch(restore_image(loaded, lq, settings, progress=progress).image, kind)
