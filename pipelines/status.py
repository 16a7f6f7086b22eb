"""Show what a store holds.

    sisa status --config configs/tiny.yaml [--json]

Records per shard and slice, the ingest batches with their provenance, the serving model version,
open deletion requests, and the store's size on disk.
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import human_bytes, open_store, print_json, print_table

from sisa.config import SisaConfig
from sisa.lineage import checkpoints, requests_ledger


def run(cfg: SisaConfig) -> dict:
    store = open_store(cfg)
    counts = store.index.counts().to_pylist()
    shards: dict[int, dict] = {s: {"shard_id": s, "records": 0, "slices": {}} for s in range(store.num_shards)}
    for row in counts:
        sh = shards[row["shard_id"]]
        sh["records"] += row["records"]
        sh["slices"][row["slice_idx"]] = row["records"]
    sealed = checkpoints.sealed_slices(store)
    for s, sh in shards.items():
        sh["trained_through_slice"] = sealed.get(s)
    return {
        "store": store.uri,
        "num_shards": store.num_shards,
        "records": len(store.index),
        "shards": list(shards.values()),
        "ingests": store.ingests(),
        "current_version": store.current_version(),
        "open_requests": [r.request_id for r in requests_ledger.open_requests(store)],
        "size_bytes": store.size_bytes(),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    st = run(cfg)
    if args.json:
        print_json(st)
        return 0
    print(f"store   {st['store']}  ({human_bytes(st['size_bytes'])} on disk)")
    print(
        f"records {st['records']} in {st['num_shards']} shards; serving model version: {st['current_version'] or '-'}"
    )
    if st["open_requests"]:
        print(f"open deletion requests: {', '.join(st['open_requests'])}")
    print("\nrecords per shard and slice")
    rows = []
    for sh in st["shards"]:
        per_slice = " ".join(f"{k}:{v}" for k, v in sorted(sh["slices"].items())) or "-"
        rows.append(
            {
                "shard_id": sh["shard_id"],
                "records": sh["records"],
                "slices": len(sh["slices"]),
                "trained_through": sh["trained_through_slice"],
                "records per slice (slice:n)": per_slice,
            }
        )
    print_table(rows, ["shard_id", "records", "slices", "trained_through", "records per slice (slice:n)"])
    print("\ningest batches")
    print_table(
        # Ingests from before record formats existed are text.
        [
            {**e, "input_sha256": e["input_sha256"][:12], "record_format": e.get("record_format", "text")}
            for e in st["ingests"]
        ],
        ["seq", "ingest_id", "source", "record_format", "records", "skipped", "ingested_at", "input_sha256"],
    )
    return 0
