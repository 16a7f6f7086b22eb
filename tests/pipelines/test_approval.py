"""`sisa approve` and `sisa reject` as a user meets them: with `deletion.approval=always` a
`sisa forget` waits, its requester cannot approve it, a second person's approval carries it out
and `sisa verify --replay` proves the result exact; a rejection changes nothing in the store; a
dry run names the rule a policy file would apply, and a bad policy file is refused naming the
rule and key. Every decision and refusal is in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from tests.helpers import cli_args, one_slice_subjects, run_cli, train_store, tree_digest

ROWS = make_people(12, seed=23)
SLICES = ("sharding.slice_size=8",)


def _state(store_dir: Path) -> dict[str, str]:
    keep = ("data", "index", "checkpoints", "versions", "CURRENT", "corrections", "ingests")
    return {k: v for k, v in tree_digest(store_dir).items() if k.split("/")[0] in keep}


def _audit(store_dir: Path) -> list[dict]:
    return [json.loads(x) for p in sorted((store_dir / "service" / "audit").glob("*.jsonl")) for x in p.open()]


def test_forget_waits_for_a_second_person_and_completes_exactly(tmp_path):
    train_store(tmp_path, ROWS, *SLICES)
    store_dir = tmp_path / "s"
    args = cli_args(store_dir, *SLICES, "deletion.approval=always")
    subject = next(iter(one_slice_subjects(Store.open(str(store_dir)))))
    before = _state(store_dir)
    code, out, err = run_cli(
        "forget", "--subject", subject, "--as", "alice", "--identity-verification", "ID card checked", *args
    )
    assert code == 0, err
    request_id = out.splitlines()[-3]
    assert "awaiting approval: rule `default`" in out and "approval by 1 approver(s)" in out
    assert "nothing was served or deleted yet" in out and _state(store_dir) == before
    code, out, err = run_cli("process", *args)
    assert code == 0 and "no batch" in out and _state(store_dir) == before  # a batch does not take it
    code, out, err = run_cli("approve", request_id, "--as", "alice", *args)
    assert code == 6 and "its approver must be someone else" in err and _state(store_dir) == before
    code, out, err = run_cli("approve", request_id, "--as", "bob", *args)
    assert code == 0 and "lineage check passed" in out, out + err
    code, out, err = run_cli("verify", "--replay", *args)
    assert code == 0 and "verified" in out, out + err
    code, out, err = run_cli("certificate", request_id, *args)
    assert code == 0
    assert "decided by        rule `default`" in out and "approved by       bob" in out
    assert "requested by      alice; identity verified: ID card checked" in out
    cert = json.loads(run_cli("certificate", request_id, "--json", *args)[1])["certificate"]
    assert [a["by"] for a in cert["governance"]["approvals"]] == ["bob"]
    # The approvals are inside what is signed: the certificate verifies offline; the audit chain holds.
    cert_file, key_file = tmp_path / "cert.json", tmp_path / "key.pem"
    assert run_cli("certificate", request_id, "--out", str(cert_file), *args)[0] == 0
    assert run_cli("keys", "export", "--out", str(key_file), *args)[0] == 0
    assert json.loads(cert_file.read_text())["governance"]["approvals"][0]["by"] == "bob"
    code, out, err = run_cli("certificate", "verify", str(cert_file), "--public-key", str(key_file), *args)
    assert code == 0, out + err
    code, out, err = run_cli("audit", "verify", *args)
    assert code == 0, out + err
    events = [(e["who"], e["outcome"]) for e in _audit(store_dir) if e.get("request_id") == request_id]
    assert events == [("alice", "refused: SelfApprovalError"), ("bob", "completed")]
    assert subject not in json.dumps(_audit(store_dir))


def test_reject_leaves_the_store_byte_identical_and_the_ledger_says_why(tmp_path):
    train_store(tmp_path, ROWS, *SLICES)
    store_dir = tmp_path / "s"
    args = cli_args(store_dir, *SLICES, "deletion.approval=always", "deletion.relief=true")
    subject = next(iter(one_slice_subjects(Store.open(str(store_dir)))))
    before, serving = _state(store_dir), Store.open(str(store_dir)).current_version()
    code, out, err = run_cli("forget", "--subject", subject, "--as", "alice", "--json", *args)
    assert code == 0, err
    request_id = json.loads(out)["request_id"]
    with pytest.raises(SystemExit):  # argparse: --reason is required
        run_cli("reject", request_id, "--as", "bob", *args)
    code, out, err = run_cli("reject", request_id, "--as", "bob", "--reason", " ", *args)
    assert code == 4 and "needs a reason" in err
    code, out, err = run_cli("reject", request_id, "--as", "bob", "--reason", "identity not verified", *args)
    assert code == 0 and "rejected by bob (identity not verified)" in out, out + err
    assert _state(store_dir) == before and Store.open(str(store_dir)).current_version() == serving
    listed = json.loads(run_cli("requests", "--json", *args)[1])
    (entry,) = listed
    assert entry["status"] == "rejected" and entry["rejection"]["reason"] == "identity not verified"
    assert entry["rejection"]["by"] == "bob" and not entry["overdue"]
    code, out, err = run_cli("approve", request_id, "--as", "carol", *args)
    assert code == 6 and "is rejected, not awaiting approval" in err
    code, out, err = run_cli("approve", "req-nope", "--as", "carol", *args)
    assert code == 5 and "does not exist" in err


def test_a_dry_run_names_the_rule_of_a_policy_file_and_a_bad_file_is_refused(tmp_path):
    train_store(tmp_path, ROWS, *SLICES)
    store_dir = tmp_path / "s"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n"
        "  - name: many-people\n    when: {min_subjects: 2}\n    approvers: 2\n    deadline_days: 10\n"
        "  - name: one-person\n    method: exact\n"
    )
    args = cli_args(store_dir, *SLICES, f"deletion.policy={policy}")
    subject = next(iter(one_slice_subjects(Store.open(str(store_dir)))))
    code, out, err = run_cli("forget", "--subject", subject, "--dry-run", *args)
    assert code == 0, err
    assert f"would be decided by rule `one-person` (policy {policy}, fingerprint" in out
    assert "method exact, no approval, deadline 30 day(s)" in out
    ids = ",".join(r["record_id"] for r in ROWS[:6])
    code, out, err = run_cli("forget", "--ids", ids, "--dry-run", "--json", *args)
    decision = json.loads(out)["decision"]
    assert (decision["rule"], decision["approvers"], decision["deadline_days"]) == ("many-people", 2, 10)
    assert json.loads(run_cli("requests", "--json", *args)[1]) == []  # a dry run records nothing
    policy.write_text("rules:\n  - name: x\n    aprovers: 1\n    when: {kind: erase}\n")
    code, out, err = run_cli("forget", "--subject", subject, "--dry-run", *args)
    assert code == 2
    assert "rules[0] (`x`): unknown key `aprovers`" in err and "rules[0] (`x`).when.kind" in err
    assert "the last rule should have no `when`" in err
