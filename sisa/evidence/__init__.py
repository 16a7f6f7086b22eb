"""What shows that a record is forgotten or corrected: probes, recall, leak@k, membership
inference, and the demo's report with its plots.
"""

from sisa.evidence import measures, probes
from sisa.evidence.probes import Probe, read_probes

__all__ = [
    "Probe",
    "measures",
    "probes",
    "read_probes",
]
