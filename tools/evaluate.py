"""`refusion evaluate` (refusion/cli/evaluate.py) as a script: python tools/evaluate.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.evaluate import main

    sys.exit(main())
