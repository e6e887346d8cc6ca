"""`refusion export` (refusion/cli/export.py) as a script: python tools/export_onnx.py --help."""
import sys

from refusion.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
