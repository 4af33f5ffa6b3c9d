"""`python -m streams` runs the worker (same as `nudge worker`)."""

import sys

from nudge.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
