"""What shows that a record is forgotten or corrected: probes, recall, leak@k, membership
inference, and the demo's report with its plots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sisa.lazy import exports

if TYPE_CHECKING:
    from sisa.evidence import measures, probes, statistics
    from sisa.evidence.probes import Probe, read_probes
    from sisa.evidence.statistics import auc, auc_interval

__all__ = [
    "Probe",
    "auc",
    "auc_interval",
    "measures",
    "probes",
    "read_probes",
    "statistics",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "Probe": "probes",
        "read_probes": "probes",
        "auc": "statistics",
        "auc_interval": "statistics",
    },
)
