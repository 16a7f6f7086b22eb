"""The typed deletion-request entry (sisa/lineage/requests_ledger.py): an entry written before
decision rules existed reads and writes back unchanged; the governance fields (the deciding rule,
requester, attestation, approvals, rejection) round-trip; the new statuses mean what they say."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta

import pytest

from sisa.lineage.requests_ledger import Decision, DeletionRequest, RequestStatus, RequestVersions, VersionKind

OLD_ENTRY = {
    "request_id": "req-20261101-101500-ab12cd",
    "selector": {"kind": "subject", "value_hash": "h", "value_hashes": ["h1"]},
    "id_hashes": ["a", "b"],
    "records": 2,
    "received_at": "2026-11-01T10:15:00.000+00:00",
    "deadline": "2026-12-01T10:15:00.000+00:00",
    "status": "completed",
    "mode": "relief",
    "kind": "forget",
    "history": [{"status": "received", "at": "2026-11-01T10:15:00.000+00:00"}],
    "versions": {"relief": 2, "exact": 3},
    "schema_version": 1,
}


def test_an_entry_from_before_decision_rules_reads_and_writes_back_its_keys_unchanged():
    req = DeletionRequest.from_dict(OLD_ENTRY)
    assert req.decision is None and req.requested_by is None and req.approvals == [] and req.rejection is None
    assert req.approvers_needed == 0 and not req.needs_approval
    out = req.to_dict()
    assert {k: out[k] for k in OLD_ENTRY} == OLD_ENTRY
    assert out["decision"] is None and out["approvals"] == []


def test_governance_fields_round_trip_and_a_newer_decision_key_is_kept():
    decision = {
        "rule": "bulk",
        "policy_fingerprint": "0123456789abcdef",
        "policy": "configs/policies/four-eyes.yaml",
        "method": "relief",
        "approvers": 2,
        "relief_before_approval": True,
        "deadline_days": 30,
        "facts": {"kind": "forget", "records": 2},
        "from_a_newer_sisa": [1, 2],
    }
    entry = OLD_ENTRY | {
        "status": "awaiting_approval",
        "decision": decision,
        "requested_by": "privacy-desk",
        "identity_verification": "passport checked in person",
        "approvals": [{"by": "dpo-anna", "at": "2026-11-01T11:00:00.000+00:00"}],
    }
    req = DeletionRequest.from_dict(entry)
    assert isinstance(req.decision, Decision) and req.decision.rule == "bulk"
    assert req.decision.extra == {"from_a_newer_sisa": [1, 2]}
    assert req.status == RequestStatus.AWAITING_APPROVAL and req.needs_approval  # 1 of 2
    assert DeletionRequest.from_dict(req.to_dict()).to_dict() == req.to_dict()
    assert req.to_dict()["decision"] == decision
    req.approvals.append({"by": "dpo-anna", "at": "later"})  # the same person twice counts once
    assert req.needs_approval
    req.approvals.append({"by": "dpo-ben", "at": "later"})
    assert not req.needs_approval


def test_a_waiting_request_owes_a_batch_nothing_and_a_rejected_one_is_final_and_never_overdue():
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    waiting = DeletionRequest.from_dict(OLD_ENTRY | {"status": "awaiting_approval", "queued": True, "deadline": past})
    assert waiting.status.is_open and not waiting.batch_owned and waiting.is_overdue()
    rejected = DeletionRequest.from_dict(
        OLD_ENTRY | {"status": "rejected", "deadline": past, "rejection": {"by": "b", "at": "t", "reason": "r"}}
    )
    assert rejected.status.is_terminal and not rejected.is_overdue() and not rejected.needs_approval


def test_the_versions_a_request_committed_are_typed_and_their_json_is_as_before():
    """The resume state a phase reads (which versions a request committed) is a frozen
    RequestVersions; the ledger's JSON object round-trips byte for byte, in the order the phases
    commit, with "exact": null (ran, nothing to commit) kept apart from no "exact" (not yet)."""
    for written in ({}, {"relief": 2}, {"approximate": 4, "exact": 5}, {"exact": None}, {"isolate": 2, "later": 9}):
        req = DeletionRequest.from_dict(OLD_ENTRY | {"versions": written})
        assert isinstance(req.versions, RequestVersions)
        assert json.dumps(req.to_dict()["versions"]) == json.dumps(written)
        assert DeletionRequest.from_dict(json.loads(json.dumps(req.to_dict()))).versions == written
    v = RequestVersions.from_dict({"exact": None})
    assert v.has(VersionKind.EXACT) and "exact" in v and v["exact"] is None and v.bridge is None
    assert not RequestVersions().has(VersionKind.EXACT) and RequestVersions().get("exact") is None
    assert copy.deepcopy(v).has(VersionKind.EXACT) and pickle.loads(pickle.dumps(v)) == {"exact": None}
    with pytest.raises(KeyError):
        RequestVersions()["exact"]
    req = DeletionRequest.from_dict(OLD_ENTRY | {"versions": {}})
    req.record_version(VersionKind.EXACT, 3)
    req.record_version(VersionKind.RELIEF, 2)  # recorded later, written first: the phases' order
    assert list(req.to_dict()["versions"].items()) == [("relief", 2), ("exact", 3)]
    assert req.versions.bridge == VersionKind.RELIEF
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.versions.exact = 4  # type: ignore[misc]
