"""`refusion evaluate` (refusion/cli/evaluate.py) as a script: python tools/evaluate.py --help."""
import sys

from refusion.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
