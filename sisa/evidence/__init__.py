"""What shows that a record is forgotten or corrected: probes, recall, leak@k, membership
inference, and the demo's report with its plots.
"""
