"""`refusion export` (refusion/cli/export.py) as a script: python tools/export_onnx.py --help."""
import sys

from refusion.cli import prepare_process

if __name__ == "__main__":
    prepare_process()   # before the command's module imports torch
    from refusion.cli.export import main

    sys.exit(main())
