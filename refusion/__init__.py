"""refusion: diffusion image restoration (IR-SDE / Refusion) with deterministic baselines."""
__version__ = "0.1.0"
from refusion.schedulers.ir_sde import IRSDEScheduler, IRSDESchedulerOutput
from refusion import models
from refusion.pipeline import RefusionPipeline, load_pipeline, restore, sample
