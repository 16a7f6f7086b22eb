"""Deletion and rectification requests: selecting records, planning, relief and bridges, erasure,
the exact retrain, the purge, the certificate, and the lineage-guarded rollback.
"""
