"""`refusion sampling-trajectory` (refusion/cli/sampling_trajectory.py) as a script: python tools/sampling_trajectory.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.sampling_trajectory import main

    sys.exit(main())
