"""Reject a request that waits for approvers, with a reason: final, and nothing in the store changes.

    sisa reject req-20261201-101500-ab12cd --config C --reason "identity not verified" --as dpo-anna [--json]

1. The request must be `awaiting_approval`; NAME (`--as`, default: your login name) must not be
   the one who filed it. A reason is required (1-500 characters; say why, name no one).
2. The rejection (who, when, why) goes into the ledger and the audit log; the request is
   `rejected` for good. Its records stay as they are, no adapter or version changes (a relief its
   rule let serve while it waited is rolled back, if it still serves), a rectification's staged
   text is deleted. The same records can be asked for again in a new request.
"""

from __future__ import annotations

import argparse
from typing import Any

from sisa.pipelines import request_options
from sisa.pipelines.common import open_store, print_json

from sisa.config import SisaConfig
from sisa.forgetting import filing, runner


def run(cfg: SisaConfig, request_id: str, reason: str, by: str | None = None) -> dict[str, Any]:
    store = open_store(cfg)
    by = by or filing.login_name()
    with store.lock("reject", cfg.store.lock_timeout_s):
        req = request_options.audited(
            store, by, "reject", request_id, lambda: runner.reject(store, cfg, request_id, by, reason)
        )
    return req.public_dict()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs=1, metavar="REQUEST_ID", help="the request to reject (`sisa requests`)")
    p.add_argument("--reason", required=True, help="why (1-500 characters); kept in the ledger and the audit log")
    request_options.add_as_argument(p, "who rejects; never the requester")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    req = run(cfg, args.targets[0], args.reason, args.as_name)
    if args.json:
        print_json(req)
        return 0
    rejection = req["rejection"]
    print(f"{req['request_id']}: rejected by {rejection['by']} ({rejection['reason']}); nothing in the store changed")
    return 0
