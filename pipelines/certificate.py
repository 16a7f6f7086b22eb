"""Print the evidence of one deletion request, or check a signed certificate offline.

    sisa certificate req-20261123-101500-ab12cd --config configs/tiny.yaml [--json] [--out cert.json]
    sisa certificate verify cert.json --public-key sisa-public.pem [--json]

What it shows: the request's hash and selector kind (never the ids: the ledger keeps keyed
hashes only), counts, affected shards and slices, the checkpoints before and after (ids and
sha256), the lineage check, the purge list, timings, and the memorization evidence measured
while the text was still in memory. What it proves and what it does not is in the README.

--out writes the signed certificate alone (JSON). `verify` needs nothing but that file (or the
output of --json, or the service's GET .../certificate) and the public key `sisa keys export`
wrote: no store, no config. It exits 0 when the Ed25519 signature verifies and every field is
as signed; otherwise 7 (verification failed), naming each field that was altered, or saying that
the signature is invalid (altered, or another key's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sisa.pipelines.common import print_certificate, print_json
from sisa.storage.errors import NotFoundError, ValidationError

from sisa.api import SisaStore
from sisa.config import SisaConfig
from sisa.lineage import signing


def run(cfg: SisaConfig, request_id: str) -> dict:
    return SisaStore(cfg).request(request_id).public_dict()


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{what} {path!r} does not exist")
    return p.read_bytes()


def verify(cert_file: str, public_key_file: str) -> tuple[signing.CertificateCheck, dict]:
    """Check a certificate file against a public key file: no store involved."""
    try:
        key = signing.load_public_key(_read(public_key_file, "public key file"))
    except ValueError as e:
        raise ValidationError(f"{public_key_file!r} is not an Ed25519 public key in PEM ({e})") from None
    try:
        doc = json.loads(_read(cert_file, "certificate file"))
    except ValueError as e:
        raise ValidationError(f"{cert_file!r} is not JSON ({e})") from None
    # The certificate alone (--out), or wrapped: `sisa certificate ID --json`, the service's GET.
    if isinstance(doc, dict) and signing.SIGNATURE not in doc and isinstance(doc.get("certificate"), dict):
        doc = doc["certificate"]
    if not isinstance(doc, dict):
        raise ValidationError(f"{cert_file!r} holds no certificate (a JSON object)")
    return signing.verify_certificate(doc, key), doc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="REQUEST_ID, or `verify FILE` (with --public-key)")
    p.add_argument("--out", metavar="FILE", help="write the request's signed certificate (JSON) to FILE")
    p.add_argument("--public-key", metavar="KEY", help="verify: the PEM public key (`sisa keys export`)")


def _cli_verify(args: argparse.Namespace) -> int:
    if len(args.targets) != 2 or not args.public_key:
        raise ValidationError("usage: sisa certificate verify FILE --public-key KEY")
    check, cert = verify(args.targets[1], args.public_key)
    if args.json:
        print_json(
            {"valid": check.valid, "problems": check.problems, "altered": check.altered, "key_id": check.key_id}
            | {"signed_by": check.signed_by, "request_id": cert.get("request_id")}
        )
        return 0 if check.valid else 7
    when = (cert.get(signing.SIGNATURE) or {}).get("signed_at", "?")
    print(f"certificate of request {cert.get('request_id', '?')} ({cert.get('kind', '?')}), signed {when}")
    print(f"  key given         {check.key_id[:16] if check.key_id else '?'}... (sha256 of the raw public key)")
    if check.valid:
        fields = len(cert) - 1
        print(f"VALID: the Ed25519 signature verifies and all {fields} fields are as signed")
        return 0
    print("NOT VALID:")
    for line in check.problems:
        print(f"  {line}")
    return 7


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    if args.targets[0] == "verify":
        return _cli_verify(args)
    if len(args.targets) != 1:
        raise ValidationError("usage: sisa certificate REQUEST_ID (or: sisa certificate verify FILE --public-key KEY)")
    store = SisaStore(cfg)
    if args.out:
        cert = store.certificate(args.targets[0])
        Path(args.out).write_text(json.dumps(cert, indent=2, sort_keys=True) + "\n")
        print(f"certificate of request {cert.get('request_id', args.targets[0])} written to {args.out}")
        return 0
    req = store.request(args.targets[0])
    if args.json:
        print_json(req.public_dict())
        return 0
    print_certificate(req)
    return 0
