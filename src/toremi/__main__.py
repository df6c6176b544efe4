"""``python -m toremi <stage> ...``: the same as the ``toremi`` command."""

import sys

from toremi.cli import main

if __name__ == "__main__":
    sys.exit(main())
