"""`refusion import` (refusion/cli/import_official.py) as a script: python tools/import_official.py --help."""
import sys

from refusion.cli.import_official import main

if __name__ == "__main__":
    sys.exit(main())
