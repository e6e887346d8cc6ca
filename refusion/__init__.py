"""refusion: diffusion image restoration (IR-SDE / Refusion) with deterministic baselines.

The public API: the scheduler, the pipeline, the one loader (``load_model``) and the one-line forms
built on the one restore path (``sample``, ``restore``, ``sample_posterior``, ``restore_image``), the networks (``refusion.models``),
the metrics (``refusion.metrics``, i.e. refusion.evaluation.metrics) and official formats
(``refusion.official``). Everything else is imported from its layer (see docs/architecture.md).

The names are imported on first use (PEP 562 ``__getattr__``): ``import refusion`` and the
``refusion`` command's ``--help`` do not pay for torch and diffusers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (a module itself for models, metrics and official)
_PUBLIC = {
    "IRSDEScheduler": "refusion.schedulers.ir_sde",
    "IRSDESchedulerOutput": "refusion.schedulers.ir_sde",
    "DenoisingSDEScheduler": "refusion.schedulers.denoising_sde",
    "RefusionPipeline": "refusion.inference.pipeline",
    "load_pipeline": "refusion.inference.pipeline",
    "load_model": "refusion.inference.model",
    "LoadedModel": "refusion.inference.model",
    "RestoreSettings": "refusion.inference.settings",
    "restore_image": "refusion.inference.restorer",
    "sample": "refusion.inference.sampling",
    "sample_posterior": "refusion.inference.posterior",
    "PosteriorSamples": "refusion.inference.posterior",
    "restore": "refusion.inference.restoration",
    "models": "refusion.models",
    "metrics": "refusion.evaluation.metrics",
    "official": "refusion.official",
}
_MODULES = ("models", "metrics", "official")

if TYPE_CHECKING:  # the same names for type checkers and for the import rules of tests/test_layering.py
    from refusion import models, official
    from refusion.evaluation import metrics
    from refusion.inference.model import LoadedModel, load_model
    from refusion.inference.pipeline import RefusionPipeline, load_pipeline
    from refusion.inference.restorer import restore_image
    from refusion.inference.sampling import sample
    from refusion.inference.settings import RestoreSettings
    from refusion.inference.posterior import PosteriorSamples, sample_posterior
    from refusion.inference.restoration import restore
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
    from refusion.schedulers.ir_sde import IRSDEScheduler, IRSDESchedulerOutput

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'refusion' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value   # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
