"""The environment that keeps every process offline and quiet: no hub, no telemetry.

Set before torch, transformers, datasets, Ray or MLflow are imported (they read some of these at
import time); Ray workers get the same values through the scheduler's runtime env.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # MLflow draws its own progress bars on a tracking server's artifact transfers, terminal or not.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply() -> None:
    """Set every variable the user has not set."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
