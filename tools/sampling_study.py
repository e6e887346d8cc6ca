"""`refusion sampling-study` (refusion/cli/sampling_study.py) as a script: python tools/sampling_study.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.sampling_study import main

    sys.exit(main())
