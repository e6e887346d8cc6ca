"""Train a deterministic regressor: NAFNet, Baseline, HINet, NAFFT-Net (task: regressor).

    python tools/train_regressor.py RECIPE [--set KEY=VALUE ...] [--resume | --overwrite]
    accelerate launch [--multi_gpu --num_processes N] tools/train_regressor.py RECIPE ...
"""
import sys

from refusion.training.cli import main

if __name__ == "__main__":
    sys.exit(main("regressor"))
