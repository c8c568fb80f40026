"""``python -m shiftacc``: the same command line as the ``shiftacc`` script."""

import sys

from .sw.cli import main

sys.exit(main())
