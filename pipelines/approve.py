"""Approve a request that waits for approvers (four eyes), and carry it out.

    sisa approve req-20261201-101500-ab12cd --config C --as dpo-anna [--json]
    sisa approve req-20261201-101500-ab12cd --config C --as dpo-anna --queue   # the next batch does it

A request waits (`awaiting_approval`) when the rule of the policy that decided it asks for
approvers (`deletion.policy`; `deletion.approval=always`: every request). The recipe
(sisa/forgetting/runner.py: `approve`):
1. The request must be awaiting approval; NAME (`--as`, default: your login name) must not be the
   one who filed it, nor have approved it already. Otherwise nothing changes.
2. The approval (who, when) is written to the ledger and the audit log; while the rule asks for
   more distinct approvers, the request waits on.
3. Approved by enough: its relief serves (as its mode says) and it is queued. A request filed to
   be carried out at once is carried out now, a batch of one from the version serving now (the
   affected shards retrain, the exact version commits, the purge, the certificate with the
   approvals); one filed with --queue (or over HTTP), or approved with --queue, waits for the next
   batch (`sisa process`, the service's worker).
"""

from __future__ import annotations

import argparse
from typing import Any

from sisa.pipelines import request_options
from sisa.pipelines.common import open_store, print_json

from sisa.config import SisaConfig
from sisa.forgetting import filing, runner
from sisa.lineage import requests_ledger


def run(
    cfg: SisaConfig,
    request_id: str,
    by: str | None = None,
    queue: bool = False,
    evidence: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    store = open_store(cfg)
    by = by or filing.login_name()
    at_once = not queue and not requests_ledger.read_request(store, request_id).queued
    # Carried out now, it retrains: one job at a time (the jobs lock); else a relief commit only.
    lock = store.job if at_once else store.lock
    with lock("approve", cfg.store.lock_timeout_s):
        req = request_options.audited(
            store,
            by,
            "approve",
            request_id,
            lambda: runner.approve(
                store, cfg, request_id, by, at_once=at_once, evidence=evidence, log=request_options.progress(quiet)
            ),
        )
    return req.public_dict()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs=1, metavar="REQUEST_ID", help="the request to approve (`sisa requests`)")
    request_options.add_as_argument(p, "who approves; never the requester")
    p.add_argument(
        "--queue",
        action="store_true",
        help="approve and leave it to the next batch (`sisa process`), even if it was filed to be carried out at once",
    )
    p.add_argument("--no-evidence", action="store_true", help="skip the memorization measurements (faster)")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    req = run(cfg, args.targets[0], args.as_name, args.queue, not args.no_evidence, quiet=args.json)
    if args.json:
        print_json(req)
        return 0
    if req["status"] == "awaiting_approval":
        needed = (req.get("decision") or {}).get("approvers", 0)
        print(f"{req['request_id']}: approval recorded ({len(req['approvals'])} of {needed}); it waits for the others")
        return 0
    request_options.print_request(req)
    return 0
