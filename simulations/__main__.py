"""`python -m simulations SCENARIO ...`: the same command as `ezthrottle simulate`."""

import sys

from .cli import main

sys.exit(main())
