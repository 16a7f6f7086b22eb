"""Remove what crashes left behind: staged temp files, uncommitted ingest parts, half checkpoints.

    sisa gc --config configs/tiny.yaml [--dry-run] [--json]

Safe at any time: it takes the store lock, and nothing it removes is ever read.
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import human_bytes, open_store, print_json
from sisa.storage import gc

from sisa.config import SisaConfig


def run(cfg: SisaConfig, dry_run: bool = False) -> dict:
    store = open_store(cfg)
    with store.job("gc", cfg.store.lock_timeout_s):
        orphans = gc.find_orphans(store.fs, store.committed_ingests)
        freed = 0 if dry_run else gc.remove(store.fs, orphans)
    return {"orphans": orphans, "removed": not dry_run, "bytes_freed": freed}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.dry_run)
    if args.json:
        print_json(res)
        return 0
    for path in res["orphans"]:
        print(("would remove " if args.dry_run else "removed ") + path)
    print(f"{len(res['orphans'])} orphan(s)" + ("" if args.dry_run else f", {human_bytes(res['bytes_freed'])} freed"))
    return 0
