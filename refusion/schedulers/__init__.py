"""Noise schedulers: the IR-SDE mean-reverting SDE, the IR-SDE paper's denoising SDE, and their samplers."""
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler, IRSDESchedulerOutput
from refusion.schedulers.samplers import SAMPLERS

__all__ = ["DenoisingSDEScheduler", "IRSDEScheduler", "IRSDESchedulerOutput", "SAMPLERS"]
