"""Train a 'regressor' recipe: `refusion train` limited to that task (accelerate launch works on this file)."""
import sys

from refusion.cli.train import main

if __name__ == "__main__":
    sys.exit(main(task="regressor"))
