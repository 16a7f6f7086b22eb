"""List model versions.

    sisa versions --config configs/tiny.yaml [--json]

A version is a set {shard_id → checkpoint_id}; `purged` versions held a checkpoint trained on
deleted data and can never serve again; `approximate` ones came from the fast path.
"""

from __future__ import annotations

import argparse

from pipelines.common import open_store, print_json, print_table
from sisa import versions
from sisa.config import SisaConfig


def run(cfg: SisaConfig) -> dict:
    store = open_store(cfg)
    return {"current": store.current_version(), "versions": versions.all_versions(store)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg)
    if args.json:
        print_json(res)
        return 0
    rows = []
    for v in res["versions"]:
        flags = [f for f, on in (("approximate", v.get("approximate")), (f"excludes {v.get('excluded_shards')}", v.get("excluded_shards"))) if on]
        rows.append(
            {
                "": "*" if v["model_version"] == res["current"] else "",
                "version": v["model_version"],
                "status": v["status"] + (f" by {v['purged_by']}" if v.get("purged_by") else ""),
                "reason": v["reason"],
                "shards": len(v["shards"]),
                "parent": v.get("parent"),
                "created_at": v["created_at"],
                "notes": ", ".join(flags),
            }
        )
    print_table(rows, ["", "version", "status", "reason", "shards", "parent", "created_at", "notes"])
    return 0
