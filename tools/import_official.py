"""`refusion import` (refusion/cli/import_official.py) as a script: python tools/import_official.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.import_official import main

    sys.exit(main())
