"""Serving a model version: the engine that decodes with the shard mixture, the exported bundle,
and MLflow (the tracking client, the pyfunc model, the mirror of the version ledger).
"""
