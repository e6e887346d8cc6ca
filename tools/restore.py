"""`refusion restore` (refusion/cli/restore.py) as a script: python tools/restore.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.restore import main

    sys.exit(main())
