"""Signed certificates (sisa/lineage/signing.py): a certificate verifies with its public key
alone; an altered field is named, an altered signature or another key is invalid; the store's key
is made with the store (0600), or on first need, or read from `deletion.signing_key`."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sisa.storage import layout
from sisa.storage.errors import ConfigError, StoreError

from sisa.data import open_store
from sisa.lineage import signing
from tests.helpers import make_cfg

BODY = {
    "kind": "forget",
    "request_id": "req-1",
    "request_sha256": "ab" * 32,
    "serving_version": 3,
    "checkpoints_after": [{"shard_id": 0, "checkpoint_id": "c0", "adapter_sha256": "cd" * 32}],
    "lineage_check": {"passed": True, "violations": []},
    "purge_check": {"passed": True, "remaining": []},
    "evidence": {"exact": {"leak_at_k": {"k": 10, "samples": 40, "samples_with_answer": 0}}},
    "audit_head": {"seq": 7, "hash": "ef" * 32},
}


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def test_canonical_json_ignores_key_order_and_whitespace():
    a = signing.canonical_json({"b": [1, {"y": 2, "x": "é"}], "a": None})
    assert a == b'{"a":null,"b":[1,{"x":"\xc3\xa9","y":2}]}'
    assert signing.canonical_json(json.loads(json.dumps({"a": None, "b": [1, {"x": "é", "y": 2}]}, indent=4))) == a


def test_a_signed_certificate_verifies_and_survives_a_json_round_trip(key):
    cert = signing.sign_certificate(BODY, key)
    assert set(cert) == set(BODY) | {"signature"} and cert["signature"]["algorithm"] == "ed25519"
    again = json.loads(json.dumps(cert, indent=2))  # as the ledger and --out write it
    check = signing.verify_certificate(again, key.public_key())
    assert check.valid and not check.problems and check.signed_by == check.key_id


@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        (lambda c: c.__setitem__("serving_version", 2), "serving_version", "differs from what was signed"),
        (lambda c: c["lineage_check"].__setitem__("passed", False), "lineage_check", "differs"),
        (lambda c: c["evidence"]["exact"]["leak_at_k"].__setitem__("samples", 4000), "evidence", "differs"),
        (lambda c: c.pop("audit_head"), "audit_head", "was signed but is missing"),
        (lambda c: c.__setitem__("approved_by", "someone"), "approved_by", "was added after signing"),
    ],
    ids=["top-level", "nested", "deep", "removed", "added"],
)
def test_an_altered_field_is_named(key, edit, field, says):
    cert = signing.sign_certificate(BODY, key)
    edit(cert)
    check = signing.verify_certificate(cert, key.public_key())
    assert not check.valid and check.altered == [field]
    assert len(check.problems) == 1 and f"`{field}`" in check.problems[0] and says in check.problems[0]


def test_a_changed_signature_or_digest_is_invalid(key):
    cert = signing.sign_certificate(BODY, key)
    sig = bytearray(base64.b64decode(cert["signature"]["value"]))
    sig[0] ^= 1
    bad = copy.deepcopy(cert)
    bad["signature"]["value"] = base64.b64encode(bytes(sig)).decode()
    check = signing.verify_certificate(bad, key.public_key())
    assert not check.valid and "signature is invalid" in check.problems[0] and "altered" in check.problems[0]
    # Rewriting a field and its digest together: the signature no longer covers the digests.
    forged = copy.deepcopy(cert)
    forged["serving_version"] = 2
    forged["signature"]["fields"] = signing.field_digests(forged)
    assert "signature is invalid" in signing.verify_certificate(forged, key.public_key()).problems[0]
    bad["signature"]["value"] = "not base64!"
    assert not signing.verify_certificate(bad, key.public_key()).valid


def test_the_wrong_public_key_is_invalid_and_says_which_key_signed(key):
    cert = signing.sign_certificate(BODY, key)
    other = Ed25519PrivateKey.generate().public_key()
    check = signing.verify_certificate(cert, other)
    assert not check.valid and "signature is invalid" in check.problems[0]
    assert signing.key_id(key.public_key())[:16] in check.problems[0] and "wrong public key" in check.problems[0]


def test_an_unsigned_certificate_is_not_valid(key):
    check = signing.verify_certificate(dict(BODY), key.public_key())
    assert not check.valid and "never signed" in check.problems[0]


def test_a_store_gets_its_key_at_creation_with_mode_0600(tmp_path):
    cfg = make_cfg(tmp_path / "s")
    store = open_store(cfg, create=True)
    path = store.fs.full(layout.SIGNING_KEY)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    said = []
    key = signing.signing_key(store, cfg, say=said.append)
    assert not said and signing.key_id(key.public_key()) == signing.key_id(signing.public_key(store, cfg))
    assert signing.create_signing_key(store) is None  # never replaced


def test_a_store_without_a_key_gets_one_on_first_need_and_says_so(tmp_path):
    cfg = make_cfg(tmp_path / "s")
    store = open_store(cfg, create=True)
    os.unlink(store.fs.full(layout.SIGNING_KEY))  # a store made before certificates were signed
    assert signing.public_key(store, cfg) is None
    said = []
    key = signing.signing_key(store, cfg, say=said.append)
    assert len(said) == 1 and "had no signing key" in said[0] and "sisa keys export" in said[0]
    assert "PRIVATE" not in said[0]
    assert signing.key_id(signing.signing_key(store, cfg, say=said.append).public_key()) == signing.key_id(
        key.public_key()
    )
    assert len(said) == 1 and stat.S_IMODE(os.stat(store.fs.full(layout.SIGNING_KEY)).st_mode) == 0o600


def test_the_users_own_key_signs_when_the_config_names_it(tmp_path, key):
    pem = tmp_path / "mine.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pem.chmod(0o600)
    cfg = make_cfg(tmp_path / "s", f"deletion.signing_key={pem}")
    store = open_store(cfg, create=True)
    assert not store.fs.exists(layout.SIGNING_KEY)  # no second key beside the user's
    used = signing.signing_key(store, cfg, say=lambda m: pytest.fail(m))
    assert signing.key_id(used.public_key()) == signing.key_id(key.public_key())


def test_a_bad_signing_key_setting_is_a_config_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ConfigError) as e:
        make_cfg(tmp_path / "s", f"deletion.signing_key={tmp_path / 'missing.pem'}")
    assert "no such file" in str(e.value)
    with pytest.raises(ConfigError) as e:
        make_cfg(tmp_path / "s", f"deletion.signing_key={text}")
    assert "PKCS#8 PEM private key" in str(e.value) and "openssl genpkey" in str(e.value)
    rsa = tmp_path / "rsa.pem"  # PEM, but not Ed25519: refused when it would sign
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    rsa.write_bytes(
        rsa_keys.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    rsa.chmod(0o600)
    cfg = make_cfg(tmp_path / "s", f"deletion.signing_key={rsa}")
    with pytest.raises(StoreError, match="Ed25519"):
        signing.signing_key(open_store(cfg, create=True), cfg)


def test_a_store_that_switched_to_its_own_key_knows_both(tmp_path, key):
    """Certificates signed before `deletion.signing_key` was set carry the store's key: both are
    known to `sisa audit verify`."""
    cfg = make_cfg(tmp_path / "s")
    store = open_store(cfg, create=True)
    own = signing.key_id(signing.public_key(store, cfg))
    pem = tmp_path / "mine.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pem.chmod(0o600)
    switched = make_cfg(tmp_path / "s", f"deletion.signing_key={pem}")
    assert set(signing.public_keys(store, switched)) == {own, signing.key_id(key.public_key())}
    assert signing.key_id(signing.public_key(store, switched)) == signing.key_id(key.public_key())  # signs now
