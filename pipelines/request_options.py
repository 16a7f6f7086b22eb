"""What the two verbs that file a request share (`sisa forget`, `sisa rectify`): the flags that
choose what serves until the exact version and what evidence is measured, the mode those flags
make, who files it (`--as`, `--identity-verification`), the holdout file they read, and how a
request's outcome (or a dry run's plan and rule) is printed. `sisa approve` and `sisa reject`
take `--as` from here too. Turning the flags into what a request is filed with (its mode, the
evidence inputs, the filer) is sisa's (sisa/forgetting/filing.py), shared with the Python API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sisa.pipelines.common import print_table
from sisa.storage.audit import AuditLog
from sisa.storage.errors import SisaError
from sisa.storage.store import Store

from sisa.forgetting import policy
from sisa.lineage import Decision, DeletionRequest


def add_as_argument(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help=f"{who} (default: your login name); the ledger and the audit log record it",
    )


def add_request_arguments(p: argparse.ArgumentParser, fast: str, queue: str, dry_run: str, probes: str) -> None:
    """--fast, --isolate, --no-relief, --queue, --dry-run, --no-evidence, --holdout, --probes,
    --as, --identity-verification; the help of the four that differ between the verbs is the
    verb's own."""
    p.add_argument("--fast", action="store_true", help=fast)
    p.add_argument(
        "--isolate", action="store_true", help="serve the unaffected shards alone at once, then the exact version"
    )
    p.add_argument(
        "--no-relief",
        action="store_true",
        help="serve nothing new until the exact version (default: the "
        "exact relief version serves at once; deletion.relief)",
    )
    p.add_argument("--queue", action="store_true", help=queue)
    p.add_argument("--dry-run", action="store_true", help=dry_run)
    p.add_argument("--no-evidence", action="store_true", help="skip the memorization measurements (faster)")
    p.add_argument(
        "--holdout",
        metavar="FILE",
        help="records no model saw (JSONL/CSV/Parquet): their loss is the "
        "certificate's stranger baseline, and the non-members of the "
        "Min-k%% membership inference",
    )
    p.add_argument("--probes", metavar="FILE", help=probes)
    add_as_argument(p, "who files the request; its approver (when its rule asks for one) must be someone else")
    p.add_argument(
        "--identity-verification",
        metavar="TEXT",
        help="how the data subject's identity was verified (GDPR Art. 12(6)), e.g. 'passport checked at the "
        "front desk': free text up to 500 characters, no ids or names; kept in the ledger and the certificate",
    )


def progress(quiet: bool) -> Callable[[str], None]:
    return (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))


def print_outcome(res: dict[str, Any], headline: Callable[[dict[str, Any]], str]) -> None:
    """What `forget` and `rectify` print without --json: a dry run's plan (under
    `headline(plan)`) and the rule that would decide it, or the request filed."""
    if res.get("dry_run"):
        print_plan(res["plan"], headline(res["plan"]))
        if res.get("decision"):
            print(f"would be decided by {policy.describe(Decision.from_dict(res['decision']))}")
    else:
        print_request(res["request"])


def print_plan(plan: dict[str, Any], headline: str) -> None:
    """A dry run's plan: `headline`, the affected shards, the unaffected ones and the cost."""
    print(headline)
    print_table(
        [
            {
                "shard_id": s["shard_id"],
                "records": s["records"],
                "earliest_slice": s["earliest_slice"],
                "retrain_slices": f"{s['earliest_slice']}..{s['last_slice']}",
            }
            for s in plan["shards"]
        ],
        ["shard_id", "records", "earliest_slice", "retrain_slices"],
    )
    print(f"unaffected shards (reused byte for byte): {plan['unaffected_shards']}")
    print(f"retrain cost: {plan['cost_fraction']:.1%} of a full retrain; dry run, nothing changed")


def print_request(req: dict[str, Any]) -> None:
    """A filed request: awaiting approval (its rule, what to run), queued (its id and what serves
    until its batch), or completed (where its certificate is)."""
    if req["status"] == "awaiting_approval":
        relief = req["versions"].get("relief")
        print(f"{req['request_id']}")
        print(
            f"awaiting approval: {policy.describe(Decision.from_dict(req['decision']))}; "
            + (f"relief version {relief} serves meanwhile" if relief else "nothing was served or deleted yet")
        )
        print(
            f"an approver other than {req.get('requested_by') or 'the requester'} runs `sisa approve "
            f"{req['request_id']} --as NAME` (or `sisa reject {req['request_id']} --reason ...`)"
        )
        return
    if req["status"] == "queued":
        serving_now = (
            req["versions"].get("relief") or req["versions"].get("approximate") or req["versions"].get("isolate")
        )
        print(f"{req['request_id']}")
        print(
            f"queued; version {serving_now or req['version_before']} serves now; run `sisa process --config ...` for "
            "the exact version and the certificate"
        )
        return
    cert = req["certificate"] or {}
    print(
        f"certificate: sisa certificate {req['request_id']} --config ...  (lineage check "
        f"{'passed' if cert.get('lineage_check', {}).get('passed') else 'FAILED'})"
    )


def audited(store: Store, who: str, verb: str, request_id: str, act: Callable[[], DeletionRequest]) -> DeletionRequest:
    """`sisa approve` and `sisa reject` as the service's routes are: each decision, and each
    refusal, is a line in the store's audit log (who, what, outcome; never record text)."""
    audit = AuditLog(store.fs)
    what = f"sisa {verb} {request_id}"
    try:
        req = act()
    except SisaError as e:
        audit.append({"who": who, "what": what, "outcome": f"refused: {type(e).__name__}", "request_id": request_id})
        raise
    audit.append({"who": who, "what": what, "outcome": req.status.value, "request_id": request_id})
    return req
