"""List model versions: which serves, which are purged and by which request.

sisa versions --config configs/tiny.yaml [--json]
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import print_json, print_versions

from sisa.api import SisaStore
from sisa.config import SisaConfig
from sisa.lineage import versions


def run(cfg: SisaConfig) -> dict:
    store = SisaStore(cfg)
    current = store.serving_version()
    return {
        "current": current.model_version if current else None,
        "versions": [v.to_dict() for v in store.versions()],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg)
    if args.json:
        print_json(res)
        return 0
    print_versions([versions.ModelVersion.from_dict(v) for v in res["versions"]], res["current"])
    return 0
