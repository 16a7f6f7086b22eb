"""`python -m pipelines VERB ...`: the `sisa` command without its console script."""

import sys

from pipelines.cli import main

sys.exit(main())
