"""Re-check the guarantees of the serving version; with --replay, prove exactness by retraining.

    sisa verify --config C [REQUEST_ID] [--replay] [--json]

1. Integrity: every file of every serving checkpoint matches the sha256 in its manifest.
2. Lineage: no serving checkpoint's lineage (its own slice and all its ancestors) holds the keyed
   hash of a deleted record, for every completed request (or the one named).
3. Purge: every checkpoint a request purged is gone from disk, every version that held one is
   marked purged, and its MLflow registered version no longer exists.
4. --replay: retrain the affected shards (every shard when no request is named) from scratch on
   the live data, in a scratch folder, and compare each final adapter with the serving one,
   tensor by tensor with torch.equal. Equal tensors mean the serving model is exactly the model
   that training on the remaining data alone produces.
"""

from __future__ import annotations

import argparse
from typing import Any

from sisa.pipelines.common import print_json

from sisa.api import SisaStore
from sisa.config import SisaConfig


def run(cfg: SisaConfig, request_id: str | None = None, replay_shards: bool = False) -> dict[str, Any]:
    # 1-4: sisa/forgetting/verification.py, under the store's job lock (SisaStore.verify)
    return SisaStore(cfg).verify(request_id, replay_shards)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "targets", nargs="?", metavar="REQUEST_ID", help="check this request only (default: every completed one)"
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="retrain from scratch on the live data and compare tensors (the exactness proof)",
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    request_id = args.targets if isinstance(args.targets, str) else (args.targets[0] if args.targets else None)
    rep = run(cfg, request_id, args.replay)
    if args.json:
        print_json(rep)
        return 0 if rep["passed"] else 7
    print(
        f"serving model version {rep['serving_version']}; checked request(s): {', '.join(rep['requests']) or '(none)'}"
    )
    print(f"  integrity  {'ok' if not rep['integrity'] else 'FAILED: ' + '; '.join(rep['integrity'])}")
    violations = rep["lineage_violations"]
    lineage = (
        "ok: no serving checkpoint holds a deleted record" if not violations else "FAILED: " + ", ".join(violations)
    )
    print(f"  lineage    {lineage}")
    print(f"  purge      {'ok' if not rep['purge_problems'] else 'FAILED: ' + '; '.join(rep['purge_problems'])}")
    for shard, r in rep.get("replay", {}).items():
        print(
            f"  replay     shard {shard}: {r['tensors']} tensors "
            f"{'identical (torch.equal)' if r['identical'] else 'DIFFER'} to {r['checkpoint_id']}"
        )
    print("verified" if rep["passed"] else "VERIFICATION FAILED")
    return 0 if rep["passed"] else 7
