"""`refusion dataset` (refusion/cli/dataset.py) as a script: python tools/make_dataset.py --help."""
import sys

from refusion.cli.dataset import main

if __name__ == "__main__":
    sys.exit(main())
