"""`refusion benchmark` (refusion/cli/benchmark.py) as a script: python tools/benchmark.py --help."""
import sys

from refusion.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
