"""Training shards: one shard's job (task in, result out), the scheduler that runs the jobs on Ray
or serially, and a training run that plans, trains and commits a version.
"""
