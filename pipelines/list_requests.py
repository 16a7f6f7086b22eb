"""List deletion requests with their status and deadline; overdue ones are flagged.

sisa requests --config configs/tiny.yaml [--json]
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import print_json, print_requests

from sisa.api import SisaStore
from sisa.config import SisaConfig
from sisa.lineage import DeletionRequest


def run(cfg: SisaConfig) -> list[DeletionRequest]:
    return SisaStore(cfg).requests()


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    reqs = run(cfg)
    if args.json:
        print_json([r.public_dict() | {"overdue": r.is_overdue()} for r in reqs])
        return 0
    print_requests(reqs)
    return 0
