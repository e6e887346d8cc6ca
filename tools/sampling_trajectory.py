"""`refusion sampling-trajectory` (refusion/cli/sampling_trajectory.py) as a script: python tools/sampling_trajectory.py --help."""
import sys

from refusion.cli.sampling_trajectory import main

if __name__ == "__main__":
    sys.exit(main())
