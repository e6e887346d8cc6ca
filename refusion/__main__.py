"""`python -m refusion <command>`: the same as the `refusion` console command."""
import sys

from refusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
