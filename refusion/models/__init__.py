"""Networks of the toolkit and an explicit name -> class table used by recipes.

Each network module adds its classes to MODELS below (plain imports, no registration side effects).
"""
from __future__ import annotations

from .bokeh_nafnet import BokehNAFNet
from .conditional_nafnet import ConditionalNAFNet
from .conditional_unet import ConditionalUNet
from .hinet import HINet
from .latent_unet import LatentUNet
from .nafft import NAFFTNet
from .nafnet import Baseline, NAFNet
from .stereo_nafnet import StereoNAFNet
from .unconditional_nafnet import UnconditionalNAFNet
from .unconditional_unet import UnconditionalUNet

MODELS: dict[str, type] = {
    "NAFNet": NAFNet,
    "Baseline": Baseline,
    "ConditionalNAFNet": ConditionalNAFNet,
    "UnconditionalNAFNet": UnconditionalNAFNet,
    "BokehNAFNet": BokehNAFNet,
    "StereoNAFNet": StereoNAFNet,
    "NAFFTNet": NAFFTNet,
    "HINet": HINet,
    "ConditionalUNet": ConditionalUNet,
    "UnconditionalUNet": UnconditionalUNet,
    "LatentUNet": LatentUNet,
}


def build_model(name: str, **kwargs):
    """Build a network by its table name with its constructor arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**kwargs)


def final_output(y):
    """The image a caller should use from a network output (HINet returns [stage1, stage2])."""
    return y[-1] if isinstance(y, (list, tuple)) else y
