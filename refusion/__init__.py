"""refusion: diffusion image restoration (IR-SDE / Refusion) with deterministic baselines."""
__version__ = "0.1.0"
