"""Records in: the three record formats, reading sources, validation and provenance, shard and
slice assignment, the store a config opens, and the synthetic people of the demo and tests.
"""
