"""Train the LatentUNet autoencoder for latent SDE runs (task: latent_autoencoder).

    python tools/train_latent.py RECIPE [--set KEY=VALUE ...] [--resume | --overwrite]
    accelerate launch [--multi_gpu --num_processes N] tools/train_latent.py RECIPE ...
"""
import sys

from refusion.training.cli import main

if __name__ == "__main__":
    sys.exit(main("latent_autoencoder"))
