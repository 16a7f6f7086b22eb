"""Deletion and rectification requests. `runner` drives requests through the phases of
`phases` (one table, any number of requests: a request carried out at once, or a batch);
`selection` resolves what a request names and plans it, `corrections` validates and stages a
rectification's new text, `erasure` removes the old content from the data, `unlearning` is the
approximate fast path, `purge` deletes what held a forgotten record, `lineage_check` and
`certificate` check what serves, `rollback` serves an earlier version unless that brings
forgotten data back; `planner` and `record_texts` are their pure and in-memory helpers.
"""
