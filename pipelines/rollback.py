"""Serve an earlier model version, unless that would bring deleted data back.

    sisa rollback 3 --config configs/tiny.yaml

Refused when the version is purged (a deletion destroyed one of its checkpoints) or when any of
its checkpoints' lineage holds a deleted record; the error names the request responsible.
The pointer moves by one atomic write and the MLflow `serving` alias follows.
"""

from __future__ import annotations

import argparse

from pipelines.common import open_store, print_json
from sisa import deletion, versions
from sisa.config import SisaConfig
from storage import ledgers
from storage.errors import RefusedError


def run(cfg: SisaConfig, model_version: int) -> dict:
    store = open_store(cfg)
    with store.lock("rollback", cfg.store.lock_timeout_s):
        target = ledgers.read_version(store.fs, model_version)
        if target["status"] == versions.PURGED:
            raise RefusedError(
                f"model version {model_version} was purged by deletion request {target.get('purged_by')}: "
                "it held a checkpoint trained on deleted records, which no longer exists. "
                "Pick a version that `sisa versions` lists as active."
            )
        shards = versions.shard_checkpoints(target)
        lineages = deletion.version_lineages(store, shards)  # read once, checked against every request
        for req in ledgers.list_requests(store.fs):
            if req["status"] not in ("completed", *deletion.OPEN):
                continue
            bad = deletion.lineage_violations(store, shards, set(req["id_hashes"]), lineages)
            if bad:
                raise RefusedError(
                    f"model version {model_version} cannot serve: checkpoint(s) {', '.join(bad)} were trained on "
                    f"records deleted by request {req['request_id']}"
                )
        if target.get("approximate"):
            raise RefusedError(f"model version {model_version} is an approximate fast-path version; its exact successor replaced it")
        previous = store.current_version()
        ledgers.write_current(store.fs, model_version)
        if cfg.tracking.enabled:
            from sisa.tracking import Tracker

            Tracker(cfg.tracking, store.fs.local_path("")).set_serving_alias(model_version)
    return {"previous": previous, "current": model_version}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs=1, metavar="VERSION", help="model version number to serve")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    try:
        n = int(args.targets[0])
    except ValueError:
        from storage.errors import ValidationError

        raise ValidationError(f"VERSION should be a model version number, got {args.targets[0]!r}") from None
    res = run(cfg, n)
    if args.json:
        print_json(res)
    else:
        print(f"model version {res['current']} now serves (was {res['previous']})")
    return 0
