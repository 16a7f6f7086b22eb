"""Test-wide settings: offline by construction, small thread counts, stores under tmp_path."""

from __future__ import annotations

import os

# Before any heavy import: nothing may reach a hub or phone home.
from sisa import offline  # noqa: E402  (sets nothing heavy; must run before torch loads)

offline.apply()
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
