"""Check the audit log's hash chain, and the signed certificates that anchor it.

    sisa audit verify --config configs/tiny.yaml [--public-key sisa-public.pem] [--json]

The service's audit log (service/audit/*.jsonl) is a hash chain: each entry carries the hash of
the one before. This walks it from the first entry and reports the first one that was changed,
removed or reordered (file and line). Every signed certificate recorded the log's head when it
was signed; each such head must still be in the chain, so a cut-off tail shows too. Each signed
certificate's signature is checked as well, with the store's keys or --public-key. Lines written
before the log was chained are counted as legacy; the chain starts after them. Exits 7 on any
finding (verification failed), 0 when everything checks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sisa.pipelines.common import open_store, print_json
from sisa.storage.audit import verify_chain
from sisa.storage.errors import ValidationError

from sisa.config import SisaConfig
from sisa.lineage import requests_ledger, signing


def run(cfg: SisaConfig, public_key_file: str | None = None) -> dict:
    store = open_store(cfg)
    if public_key_file:
        try:
            given = signing.load_public_key(Path(public_key_file).read_bytes())
        except (OSError, ValueError) as e:
            raise ValidationError(f"{public_key_file!r} is not an Ed25519 public key in PEM ({e})") from None
        keys = {signing.key_id(given): given}
    else:
        keys = signing.public_keys(store, cfg)
    heads, problems, signed, unsigned = [], [], 0, 0
    for r in requests_ledger.all_requests(store):
        cert = r.certificate
        if not cert:
            continue
        if signing.SIGNATURE not in cert:
            unsigned += 1  # certified before certificates were signed
            continue
        signed += 1
        # The key it names, if known; else any: the check then says which key signed it.
        key = keys.get((cert[signing.SIGNATURE] or {}).get("key_id"), next(iter(keys.values()), None))
        check = signing.verify_certificate(cert, key) if key else None
        if check is not None and not check.valid:
            problems.append(f"the certificate of {r.request_id}: " + "; ".join(check.problems))
        if cert.get("audit_head"):
            heads.append((f"the certificate of {r.request_id}", cert["audit_head"]))
    chain = verify_chain(store.fs, heads)
    if chain.problem:
        problems.insert(0, chain.problem)
    return {
        "ok": not problems,
        "problems": problems,
        "entries": chain.entries,
        "legacy_entries": chain.legacy,
        "head": chain.head,
        "first_break": chain.where,
        "certificates_signed": signed,
        "certificates_unsigned": unsigned,
        "heads_checked": chain.heads_checked,
        "key_ids": sorted(keys),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["verify"], help="verify: walk the chain and check the certificates")
    p.add_argument("--public-key", metavar="KEY", help="check the certificates with this PEM key, not the store's")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.public_key)
    if args.json:
        print_json(res)
        return 0 if res["ok"] else 7
    head, n = res["head"], res["entries"]
    legacy = f" after {res['legacy_entries']} legacy line(s) written before the chain" if res["legacy_entries"] else ""
    if res["first_break"]:
        print(f"audit log: the chain holds for its first {n} entr{'y' if n == 1 else 'ies'}{legacy}, then breaks")
    else:
        print(
            f"audit log: {n} chained entr{'y' if n == 1 else 'ies'}{legacy}"
            + (f"; head #{head['seq']} {head['hash'][:16]}..." if head else "")
        )
    ids = ", ".join(f"{k[:16]}..." for k in res["key_ids"])
    key = f" with key{'s' if len(res['key_ids']) > 1 else ''} {ids}" if ids else " (no key: signatures not checked)"
    heads = "not looked up (the chain breaks first)" if res["first_break"] else f"{res['heads_checked']} looked up"
    print(
        f"certificates: {res['certificates_signed']} signed, checked{key}; the audit heads they recorded: {heads}"
        + (f"; {res['certificates_unsigned']} from before signing (unsigned)" if res["certificates_unsigned"] else "")
    )
    if res["ok"]:
        print("OK: no entry was changed, removed or reordered, and every certificate is as signed")
        return 0
    print("NOT VALID:")
    for line in res["problems"]:
        print(f"  {line}")
    return 7
