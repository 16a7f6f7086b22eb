"""Deletion and rectification requests. `runner` drives requests through the phases of
`phases` (one table, any number of requests: a request carried out at once, or a batch);
`selection` resolves what a request names and plans it, `corrections` validates and stages a
rectification's new text, `erasure` removes the old content from the data, `unlearning` is the
approximate fast path of a deletion, `editing` the fast edit bridge of a rectification (the
relief checkpoint taught the new text), `purge` deletes what held a forgotten record, `lineage_check` and
`certificate` check what serves, `verification` re-checks it
(`sisa verify`, replay included), `rollback` serves an earlier version unless that brings
forgotten data back; `planner` and `record_texts` are their pure and in-memory helpers, and
`deferred` the evidence a request measures beside its retrain. `options` holds what a caller
chooses about a request it files (`RequestOptions`, `Filer`).
`policy` holds the decision rules (method, approvers, deadline per request); `approve` and
`reject` are the approvers' two answers to a request that waits for them. `filing` turns a
caller's plain arguments into what a request is filed with (mode, evidence inputs, filer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sisa.lazy import exports

if TYPE_CHECKING:
    from sisa.forgetting import filing, lineage_check, phases, planner, policy, rollback, runner, verification
    from sisa.forgetting.options import Filer, RequestOptions, Texts
    from sisa.forgetting.planner import expected_cost_fraction, slice_cost
    from sisa.forgetting.rollback import roll_back
    from sisa.forgetting.runner import (
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
    "RequestOptions",
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

__getattr__, __dir__ = exports(
    __name__,
    {
        "Filer": "options",
        "RequestOptions": "options",
        "Texts": "options",
        "expected_cost_fraction": "planner",
        "slice_cost": "planner",
        "roll_back": "rollback",
        "RequestResult": "runner",
        "SelfApprovalError": "runner",
        "approve": "runner",
        "due": "runner",
        "forget": "runner",
        "process": "runner",
        "rectify": "runner",
        "reject": "runner",
        "resume": "runner",
        "train_store": "runner",
    },
)
