"""`refusion gpu-check` (refusion/cli/gpu_check.py) as a script: python tools/gpu_check.py --dry-run."""
import sys

from refusion.cli.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
