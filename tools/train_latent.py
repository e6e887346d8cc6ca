"""Train a 'latent_autoencoder' recipe: `refusion train` limited to that task (accelerate launch works on this file)."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.train import main

    sys.exit(main(task="latent_autoencoder"))
