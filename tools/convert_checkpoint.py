"""`refusion convert` (refusion/cli/convert.py) as a script: python tools/convert_checkpoint.py --help."""
import sys

from refusion.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
