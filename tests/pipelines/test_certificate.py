"""Signed certificates and the chained audit log, as a user and an auditor meet them:
`sisa keys export`, `sisa certificate ID --out`, `sisa certificate verify` with nothing but the
file and the key (a child process in an empty folder), and `sisa audit verify` catching an edited
line and a tail cut after a certificate recorded its head."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sisa.storage import layout
from sisa.storage.audit import AuditLog

from sisa.data.synthetic import make_people
from tests.helpers import REPO, RecordingCli, cli_args, train_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    """A tiny store whose audit log holds service entries, one subject forgotten (exact) after
    them: (store root, cli args, request id, public key file, certificate file)."""
    root = tmp_path_factory.mktemp("signed")
    cfg, store = train_store(root, make_people(8, seed=3))
    log = AuditLog(store.fs)  # what `sisa serve` writes before a request is certified
    for _ in range(5):
        log.append({"who": "privacy-desk", "role": "requester", "what": "GET /v1/deletion-requests", "outcome": "200"})
    sisa = RecordingCli()
    args = cli_args(root / "s")
    out = json.loads(sisa("forget", *args, "--subject", "person-00001", "--no-evidence", "--json"))
    request_id = out["request"]["request_id"]
    sisa("keys", "export", *args, "--out", str(root / "pub.pem"))
    sisa("certificate", request_id, *args, "--out", str(root / "cert.json"))
    log.append({"who": "auditor", "role": "auditor", "what": "GET /v1/versions", "outcome": "200"})
    private = (root / "s" / layout.SIGNING_KEY).read_text().splitlines()[1]  # the key's base64 body
    assert private not in "".join(sisa.output) and private not in (root / "cert.json").read_text()
    return root, args, request_id, root / "pub.pem", root / "cert.json"


def _verify_offline(tmp_path: Path, cert: dict | Path, key: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m pipelines certificate verify` in an empty folder holding only the two files,
    with no store and no config anywhere near."""
    work = tmp_path / "auditor"
    work.mkdir(exist_ok=True)
    if isinstance(cert, Path):
        shutil.copy(cert, work / "cert.json")
    else:
        (work / "cert.json").write_text(json.dumps(cert, indent=2))
    shutil.copy(key, work / "key.pem")
    env = {k: v for k, v in os.environ.items() if k != "SISA_CONFIG"} | {"PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "sisa.pipelines", "certificate", "verify", "cert.json", "--public-key", "key.pem"]
    res = subprocess.run([*argv, *extra], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert sorted(p.name for p in work.iterdir()) == ["cert.json", "key.pem"]  # it wrote nothing
    return res


def test_a_certificate_verifies_offline_with_only_the_file_and_the_key(certified, tmp_path):
    root, _, request_id, key, cert_file = certified
    cert = json.loads(cert_file.read_text())
    assert {"request_id", "request_sha256", "serving_version", "checkpoints_after", "lineage_check"} <= set(cert)
    assert {"purge_check", "evidence", "loss_evidence", "audit_head", "signature"} <= set(cert)
    assert cert["request_id"] == request_id and cert["audit_head"]["seq"] == 4
    assert cert["loss_evidence"]["records"] == 2 and all(c["adapter_sha256"] for c in cert["checkpoints_after"])
    assert "PRIVATE" not in cert_file.read_text() and "PRIVATE" not in key.read_text()
    res = _verify_offline(tmp_path, cert_file, key)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        f"certificate of request {request_id}" in res.stdout and "VALID: the Ed25519 signature verifies" in res.stdout
    )


def test_the_json_of_sisa_certificate_verifies_too(certified, tmp_path):
    root, args, request_id, key, _ = certified
    doc = json.loads(RecordingCli()("certificate", request_id, *args, "--json"))
    res = _verify_offline(tmp_path, doc, key, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["valid"]


def test_an_altered_field_is_named_and_fails(certified, tmp_path):
    _, _, _, key, cert_file = certified
    cert = json.loads(cert_file.read_text())
    cert["lineage_check"]["passed"] = not cert["lineage_check"]["passed"]
    cert["serving_version"] = 1
    res = _verify_offline(tmp_path, cert, key)
    assert res.returncode == 7 and "NOT VALID" in res.stdout
    assert "field `lineage_check` differs from what was signed" in res.stdout
    assert "field `serving_version` differs from what was signed" in res.stdout


def test_a_changed_signature_or_another_key_is_invalid(certified, tmp_path):
    _, _, _, key, cert_file = certified
    cert = json.loads(cert_file.read_text())
    value = cert["signature"]["value"]
    cert["signature"]["value"] = ("A" if value[0] != "A" else "B") + value[1:]
    res = _verify_offline(tmp_path, cert, key)
    assert res.returncode == 7 and "the signature is invalid" in res.stdout
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sisa.lineage import signing

    other = tmp_path / "other.pem"
    other.write_bytes(signing.public_key_pem(Ed25519PrivateKey.generate().public_key()))
    res = _verify_offline(tmp_path, cert_file, other)
    assert res.returncode == 7 and "the signature is invalid" in res.stdout and "wrong public key" in res.stdout
    res = _verify_offline(tmp_path, cert_file, cert_file)  # not a key at all
    assert res.returncode == 4 and "is not an Ed25519 public key" in res.stderr


def test_audit_verify_passes_then_names_an_edited_line_and_a_cut_tail(certified):
    root, args, request_id, _, _ = certified
    sisa = RecordingCli()
    out = sisa("audit", "verify", *args)
    assert "audit log: 6 chained entries" in out and "1 signed" in out and "OK:" in out
    (day,) = sorted((root / "s" / layout.SERVICE_AUDIT).iterdir())
    original = day.read_text()
    try:
        lines = original.splitlines()
        lines[1] = lines[1].replace('"outcome": "200"', '"outcome": "403"')
        day.write_text("\n".join(lines) + "\n")
        out = sisa("audit", "verify", *args, expect=7)
        assert f"entry #1 ({day.name}:2) was changed" in out and "NOT VALID" in out
        day.write_text("\n".join(original.splitlines()[:3]) + "\n")  # the tail the certificate saw, cut
        out = sisa("audit", "verify", *args, expect=7)
        assert f"the certificate of {request_id} recorded entry #4" in out and "removed from its end" in out
    finally:
        day.write_text(original)
    assert "OK:" in sisa("audit", "verify", *args)


def test_the_readmes_verifier_needs_only_cryptography(certified, tmp_path):
    """The docs' dozen lines for an auditor without sisa (guides/privacy/certificates.md), run with
    `python -I` (no sisa on the path): they accept the certificate and name the fields an edit altered."""
    _, _, _, key, cert_file = certified
    readme = (REPO / "docs" / "guides" / "privacy" / "certificates.md").read_text()
    start = readme.index("```python\n", readme.index("An auditor without sisa needs only")) + len("```python\n")
    (tmp_path / "check.py").write_text(readme[start : readme.index("```", start)])
    cert = json.loads(cert_file.read_text())
    cert["serving_version"] = 1
    (tmp_path / "edited.json").write_text(json.dumps(cert))

    def check(name: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-I", "check.py", name, str(key)]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    shutil.copy(cert_file, tmp_path / "cert.json")
    ok, bad = check("cert.json"), check("edited.json")
    assert ok.returncode == 0 and ok.stdout.strip() == "valid", ok.stderr
    assert bad.returncode == 1 and bad.stdout.strip() == "altered after signing: ['serving_version']"
