"""Print the evidence of one deletion request.

    sisa certificate req-20261123-101500-ab12cd --config configs/tiny.yaml [--json]

What it shows: the request's hash and selector kind (never the ids: the ledger keeps keyed
hashes only), counts, affected shards and slices, the checkpoints before and after (ids and
sha256), the lineage check, the purge list, timings, and the memorization evidence measured
while the text was still in memory. What it proves and what it does not is in the README.
"""

from __future__ import annotations

import argparse

from pipelines.common import open_store, print_certificate, print_json
from sisa.config import SisaConfig
from sisa.lineage import requests_ledger


def run(cfg: SisaConfig, request_id: str) -> dict:
    return requests_ledger.read_request(open_store(cfg), request_id).public_dict()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs=1, metavar="REQUEST_ID")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    req = requests_ledger.read_request(open_store(cfg), args.targets[0])
    if args.json:
        print_json(req.public_dict())
        return 0
    print_certificate(req)
    return 0
