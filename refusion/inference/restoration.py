"""``refusion.restore``: one deterministic pass of a regressor (NAFNet, Baseline, HINet, NAFFT-Net).

Takes a tensor, numpy array or PIL image and returns the same kind (like ``refusion.sample``),
optionally tile by tile, with the test-time local converter (TLC) for networks with global
pooling, and with ``half=True`` at bfloat16 (CPU) / float16 (CUDA) channels_last weights
(refusion.inference.precision). A NaN/Inf output raises FloatingPointError. ``self_ensemble``
averages the 8 flips and rotations (refusion.inference.ensemble), ``color_fix`` gives the result
the input's colours (refusion.inference.color_fix).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from refusion.data.inputs import from_batch, to_batch
from refusion.inference.loading import default_tlc, load_regressor, run_train_patch, spatial_multiple
from refusion.inference.allocator import tune_malloc_for
from refusion.inference.color_fix import apply_color_fix, check_color_fix
from refusion.inference.ensemble import check_ensemble_network, ensemble_mean
from refusion.inference.precision import InferenceNetwork, check_finite, to_float32
from refusion.inference.tiling import tiled_apply, validate_tiling

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
    check_color_fix(color_fix)
    train_patch = None
    if isinstance(model, (str, Path)):
        train_patch = run_train_patch(Path(model))
        if tlc is None:               # an imported NAFNetLocal/BaselineLocal runs with TLC unless tlc=False
            tlc = default_tlc(Path(model))
        model = load_regressor(model)
    if isinstance(model, DiffusionPipeline):
        raise ValueError(f"model is a {type(model).__name__} (an sde model); use refusion.sample(lq, model=...)")
    if not callable(model):
        raise TypeError(f"model must be a path or a regressor network, got {type(model).__name__}. "
                        + _NO_MODEL_REGRESSOR)
    x, kind = to_batch(lq)
    if device is not None and isinstance(model, torch.nn.Module):
        model = model.to(device)
    if isinstance(model, torch.nn.Module):
        params = list(model.parameters())
        x = x.to(params[0].device if params else (device or x.device))
    tune_malloc_for(x.device)
    multiple = spatial_multiple(model)
    if self_ensemble:
        check_ensemble_network(model)
    if tile_size is not None:
        validate_tiling(tile_size, tile_overlap, multiple)
    from refusion.models import final_output

    with torch.inference_mode(), _tlc_context(model, tlc, train_patch):
        # channels_last inputs; half: bf16 (CPU) / fp16 (CUDA) channels_last weights cast once for the
        # whole image (after the TLC conversion, so the converted modules are the ones that run);
        # ``model`` is not changed
        net = InferenceNetwork(model, x.device, half=half)

        def run(tile: torch.Tensor) -> torch.Tensor:
            return to_float32(final_output(net(tile)))

        def whole(image: torch.Tensor) -> torch.Tensor:
            if tile_size:
                return tiled_apply(run, image, tile_size, tile_overlap, multiple, progress=progress)
            return run(image)

        # self-ensemble: each transformed whole image is tiled on its own grid
        out = ensemble_mean(whole, [x]) if self_ensemble else whole(x)
        check_finite(out, f"the output of the {type(model).__name__} network", half)
        out = apply_color_fix(out.clamp(0.0, 1.0), x, color_fix)
    return from_batch(out.clamp(0.0, 1.0), kind)


def _tlc_context(model, tlc, train_patch: int | None):
    """The models' local-pooling (TLC) context for this network, or nothing when tlc is off."""
    if tlc is None or tlc is False:
        return contextlib.nullcontext()
    from refusion.models.nafnet import local_pooling

    if tlc is True:
        if train_patch is None:
            raise ValueError("tlc=True needs the training patch size, which is only known for a run directory "
                             "(recipe data.train.gt_size); pass it instead, e.g. tlc=256")
        tlc = train_patch
    size = (int(tlc), int(tlc)) if isinstance(tlc, int) else tuple(int(v) for v in tlc)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"tlc must be True, a training patch size (int) or (H, W), got {tlc!r}")
    return local_pooling(model, size)

