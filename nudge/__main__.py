"""`python -m nudge` is the `nudge` console script."""

import sys

from nudge.cli import main

sys.exit(main())
