"""List deletion requests with their status and deadline; overdue ones are flagged.

    sisa requests --config configs/tiny.yaml [--json]
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from pipelines.common import open_store, print_json, print_table
from sisa.config import SisaConfig
from storage import ledgers


def run(cfg: SisaConfig) -> list[dict]:
    store = open_store(cfg)
    now = datetime.now(UTC)
    out = []
    for r in ledgers.list_requests(store.fs):
        overdue = r["status"] != "completed" and datetime.fromisoformat(r["deadline"]) < now
        out.append({**r, "overdue": overdue})
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    reqs = run(cfg)
    if args.json:
        print_json([{k: v for k, v in r.items() if k != "id_hashes"} | {"id_hash_count": len(r["id_hashes"])} for r in reqs])
        return 0
    rows = [
        {
            "request_id": r["request_id"],
            "selector": r["selector"]["kind"],
            "records": r["records"],
            "mode": r["mode"],
            "status": r["status"] + (" OVERDUE" if r["overdue"] else ""),
            "received_at": r["received_at"][:19],
            "deadline": r["deadline"][:10],
            "versions": " ".join(f"{k}={v}" for k, v in r.get("versions", {}).items()),
        }
        for r in reqs
    ]
    print_table(rows, ["request_id", "selector", "records", "mode", "status", "received_at", "deadline", "versions"])
    return 0
