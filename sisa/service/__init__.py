"""`sisa serve`: the HTTP API (privacy requests, completions, the audit page), its tokens and
roles, and the worker that carries out queued requests.
"""
