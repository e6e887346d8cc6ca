"""Train an IR-SDE / Refusion noise network (task: sde).

    python tools/train_sde.py RECIPE [--set KEY=VALUE ...] [--resume | --overwrite]
    accelerate launch [--multi_gpu --num_processes N] tools/train_sde.py RECIPE ...
"""
import sys

from refusion.training.cli import main

if __name__ == "__main__":
    sys.exit(main("sde"))
