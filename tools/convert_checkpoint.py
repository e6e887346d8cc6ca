"""`refusion convert` (refusion/cli/convert.py) as a script: python tools/convert_checkpoint.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.convert import main

    sys.exit(main())
