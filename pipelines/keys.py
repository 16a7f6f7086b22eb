"""Export the public key that checks this store's certificates.

    sisa keys export --config configs/tiny.yaml [--out sisa-public.pem]

Certificates are signed with an Ed25519 key: the store's own `signing.key` (made with the store,
mode 0600, never printed or tracked), or your own PEM file named by `deletion.signing_key`. This
writes its public half (PEM) to --out or stdout; hand it to whoever audits, who then checks a
certificate with `sisa certificate verify FILE --public-key sisa-public.pem`, without the store.
A store made before certificates were signed gets its key now (it says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sisa.pipelines.common import open_store, print_json

from sisa.config import SisaConfig
from sisa.lineage import signing


def run(cfg: SisaConfig, out: str | None = None) -> dict:
    key = signing.signing_key(open_store(cfg), cfg, say=lambda m: print(m, file=sys.stderr))
    pem = signing.public_key_pem(key.public_key())
    if out:
        Path(out).write_bytes(pem)
    return {"key_id": signing.key_id(key.public_key()), "public_key": pem.decode("ascii"), "out": out}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["export"], help="export: write the public key (PEM)")
    p.add_argument("--out", metavar="FILE", help="write the PEM here instead of stdout")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.out)
    if args.json:
        print_json(res)
    elif args.out:
        print(f"public key {res['key_id'][:16]}... written to {args.out}")
    else:
        sys.stdout.write(res["public_key"])
    return 0
