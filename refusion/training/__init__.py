"""Training: one accelerate engine, per-task objectives and the run directory.

``train(recipe, resume=False, overwrite=False) -> run_dir`` trains a recipe (a Recipe or a YAML
path); tools/train_sde.py, train_regressor.py and train_latent.py are its command lines.
"""
from refusion.training.engine import NonFiniteLossError, train
from refusion.training.objectives import OBJECTIVES
from refusion.training.run_dir import CheckpointError
from refusion.errors import RunDirError

__all__ = ["train", "OBJECTIVES", "NonFiniteLossError", "CheckpointError", "RunDirError"]
