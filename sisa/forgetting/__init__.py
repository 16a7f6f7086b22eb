"""Deletion and rectification requests. `runner` drives requests through the phases of
`phases` (one table, any number of requests: a request carried out at once, or a batch);
`selection` resolves what a request names and plans it, `corrections` validates and stages a
rectification's new text, `erasure` removes the old content from the data, `unlearning` is the
approximate fast path of a deletion, `editing` the fast edit bridge of a rectification (the
relief checkpoint taught the new text), `purge` deletes what held a forgotten record, `lineage_check` and
`certificate` check what serves, `verification` re-checks it
(`sisa verify`, replay included), `rollback` serves an earlier version unless that brings
forgotten data back; `planner` and `record_texts` are their pure and in-memory helpers, and
`deferred` the evidence a request measures beside its retrain.
`policy` holds the decision rules (method, approvers, deadline per request); `approve` and
`reject` are the approvers' two answers to a request that waits for them. `filing` turns a
caller's plain arguments into what a request is filed with (mode, evidence inputs, filer).
"""

from sisa.forgetting import filing, lineage_check, phases, planner, policy, rollback, runner, verification
from sisa.forgetting.phases import Texts
from sisa.forgetting.planner import expected_cost_fraction, slice_cost
from sisa.forgetting.rollback import roll_back
from sisa.forgetting.runner import (
    Filer,
    RequestResult,
    SelfApprovalError,
    approve,
    due,
    forget,
    process,
    rectify,
    reject,
    resume,
    train_store,
)

__all__ = [
    "Filer",
    "RequestResult",
    "SelfApprovalError",
    "Texts",
    "approve",
    "due",
    "expected_cost_fraction",
    "filing",
    "forget",
    "lineage_check",
    "phases",
    "planner",
    "policy",
    "process",
    "rectify",
    "reject",
    "resume",
    "roll_back",
    "rollback",
    "runner",
    "slice_cost",
    "train_store",
    "verification",
]
