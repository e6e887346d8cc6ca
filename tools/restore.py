"""`refusion restore` (refusion/cli/restore.py) as a script: python tools/restore.py --help."""
import sys

from refusion.cli.restore import main

if __name__ == "__main__":
    sys.exit(main())
