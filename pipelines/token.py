"""Bearer tokens for `sisa serve`: made, listed and revoked here; only their hashes are kept.

    sisa token create --role requester --name privacy-desk --config C [--json]   # printed once
    sisa token list --config C
    sisa token revoke privacy-desk --config C

Roles: requester (file and read deletion requests), approver (read requests; approve or reject
those awaiting approval, never one it filed), auditor (read requests, certificates, versions,
the audit page), client (completions), admin (all).
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import open_store, print_json, print_table
from sisa.storage.errors import ValidationError

from sisa.config import SisaConfig
from sisa.service import ROLES, TokenStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["create", "list", "revoke"], help="what to do")
    p.add_argument("targets", nargs="?", metavar="NAME", help="the token to revoke")
    p.add_argument("--role", choices=ROLES, help="create: the token's role")
    p.add_argument("--name", help="create: a name for the token (who holds it)")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    tokens = TokenStore(open_store(cfg), cfg)
    if args.action == "create":
        if not args.role or not args.name:
            raise ValidationError("sisa token create needs --role and --name")
        token = tokens.create(args.name, args.role)
        if args.json:
            print_json({"name": args.name, "role": args.role, "token": token})
        else:
            print(token)
            print(f"(token {args.name!r}, role {args.role}: shown once; only its hash is kept)")
        return 0
    if args.action == "revoke":
        if not args.targets:
            raise ValidationError("sisa token revoke needs the token's NAME")
        e = tokens.revoke(args.targets)
        print_json({"revoked": e.name}) if args.json else print(f"revoked token {e.name!r}")
        return 0
    rows = [
        {"name": e.name, "role": e.role, "created_at": e.created_at, "revoked_at": e.revoked_at} for e in tokens.list()
    ]
    print_json(rows) if args.json else print_table(rows, ["name", "role", "created_at", "revoked_at"])
    return 0
