"""`python -m archlab.cli ...` runs the `archlab` command."""

import sys

from archlab.cli import main

sys.exit(main())
