"""`python -m sisa.pipelines VERB ...`: the `sisa` command without its console script."""

import sys

from sisa.pipelines.cli import main

sys.exit(main())
