"""`refusion sampling-study` (refusion/cli/sampling_study.py) as a script: python tools/sampling_study.py --help."""
import sys

from refusion.cli.sampling_study import main

if __name__ == "__main__":
    sys.exit(main())
