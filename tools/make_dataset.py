"""`refusion dataset` (refusion/cli/dataset.py) as a script: python tools/make_dataset.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.dataset import main

    sys.exit(main())
