"""Noise schedulers: the IR-SDE mean-reverting SDE and its samplers."""
from refusion.schedulers.ir_sde import IRSDEScheduler, IRSDESchedulerOutput
from refusion.schedulers.samplers import SAMPLERS

__all__ = ["IRSDEScheduler", "IRSDESchedulerOutput", "SAMPLERS"]
