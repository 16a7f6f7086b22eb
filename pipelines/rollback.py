"""Serve an earlier model version, unless that would bring deleted data back.

    sisa rollback 3 --config configs/tiny.yaml

Refused when the version is purged (a deletion destroyed one of its checkpoints) or when any of
its checkpoints' lineage holds a deleted record; the error names the request responsible.
The pointer moves by one atomic write and the MLflow `serving` alias follows.
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import print_json
from sisa.storage.errors import ValidationError

from sisa.api import SisaStore
from sisa.config import SisaConfig


def run(cfg: SisaConfig, model_version: int) -> dict:
    res = SisaStore(cfg).rollback(model_version)
    return {"previous": res.previous, "current": res.current}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs=1, metavar="VERSION", help="model version number to serve")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    try:
        n = int(args.targets[0])
    except ValueError:
        raise ValidationError(f"VERSION should be a model version number, got {args.targets[0]!r}") from None
    res = run(cfg, n)
    if args.json:
        print_json(res)
    else:
        print(f"model version {res['current']} now serves (was {res['previous']})")
    return 0
