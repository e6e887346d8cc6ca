"""`refusion benchmark` (refusion/cli/benchmark.py) as a script: python tools/benchmark.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.benchmark import main

    sys.exit(main())
