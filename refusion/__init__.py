"""refusion: diffusion image restoration (IR-SDE / Refusion) with deterministic baselines.

The public API: the scheduler, the pipeline and its one-line forms, the networks (``refusion.models``),
the metrics (``refusion.metrics``, i.e. refusion.evaluation.metrics) and official formats
(``refusion.official``). Everything else is imported from its layer (see docs/architecture.md).
"""
__version__ = "0.1.0"
from refusion import models, official
from refusion.evaluation import metrics
from refusion.inference.pipeline import RefusionPipeline, load_pipeline, sample
from refusion.inference.posterior import PosteriorSamples, sample_posterior
from refusion.inference.restoration import restore
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler, IRSDESchedulerOutput

__all__ = ["IRSDEScheduler", "DenoisingSDEScheduler", "IRSDESchedulerOutput", "RefusionPipeline", "load_pipeline", "sample", "restore",
           "sample_posterior", "PosteriorSamples",
           "models", "metrics", "official"]
