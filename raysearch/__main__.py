"""`python -m raysearch` runs the CLI."""

import sys

from raysearch.cli import main

sys.exit(main())
