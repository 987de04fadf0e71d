"""`python -m edge` is the `ezthrottle` command."""

import sys

from edge.cli import main

sys.exit(main())
