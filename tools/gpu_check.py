"""`refusion gpu-check` (refusion/cli/gpu_check.py) as a script: python tools/gpu_check.py --dry-run."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.gpu_check import main

    sys.exit(main())
