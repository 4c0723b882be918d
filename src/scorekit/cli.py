"""``python -m scorekit.cli`` (e.g. under ``torchrun``): the command line of
:mod:`scorekit.app.cli`."""

import sys

from .app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
