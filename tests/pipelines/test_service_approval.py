"""Four eyes over HTTP with the real service (`sisa serve` in a child process, tokens from `sisa
token create`): with `deletion.approval=always` a filed request waits and the worker leaves it;
only an approver who is not its requester approves it (403 otherwise, naming why; 404 for an
unknown id; 409 once it does not wait); the worker then carries it out and the certificate names
the approval; a rejection with a reason changes nothing in the store; the audit page lists what
waits against its deadline."""

from __future__ import annotations

import time

import httpx
import pytest
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import requests_ledger
from sisa.lineage.requests_ledger import RequestStatus
from tests.helpers import train_store, tree_digest
from tests.pipelines.test_service import Server, _h, _token

pytestmark = pytest.mark.slow
ROWS = make_people(16, seed=52)
SLICES = ("sharding.slice_size=8",)
TOKENS = {"desk": "requester", "anna": "approver", "ben": "approver", "aud": "auditor", "ops": "admin"}


def _state(store_dir) -> dict[str, str]:
    keep = ("data", "index", "checkpoints", "versions", "CURRENT", "corrections", "ingests")
    return {k: v for k, v in tree_digest(store_dir).items() if k.split("/")[0] in keep}


def _wait_for(store: Store, request_id: str, status: RequestStatus, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and requests_ledger.read_request(store, request_id).status != status:
        time.sleep(0.5)
    assert requests_ledger.read_request(store, request_id).status == status


def test_a_request_waits_for_an_approver_who_is_not_its_requester(tmp_path):
    train_store(tmp_path, ROWS, *SLICES)
    store_dir = tmp_path / "s"
    tokens = {name: _token(store_dir, role, name) for name, role in TOKENS.items()}
    store = Store.open(str(store_dir))
    subjects = sorted(set(store.index.live()["subject_id"].to_pylist()))
    server = Server(
        store_dir,
        *SLICES,
        "deletion.relief=true",
        "deletion.approval=always",
        "deletion.batch_after_h=0",  # a queued request is due at once: the worker takes what it may
        "service.worker_interval_s=0.5",
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            before = _state(store_dir)
            body = {"subject": subjects[0], "identity_verification": "ID card checked at the desk"}
            r = c.post("/v1/deletion-requests", json=body, headers=_h(tokens["desk"]))
            assert r.status_code == 202, r.text
            ack = r.json()
            assert (ack["status"], ack["rule"], ack["approvers_needed"]) == ("awaiting_approval", "default", 1)
            assert ack["serving_version"] == 1 and len(ack["policy_fingerprint"]) == 16
            rid = ack["request_id"]
            too_long = {"subject": subjects[1], "identity_verification": "x" * 501}
            assert c.post("/v1/deletion-requests", json=too_long, headers=_h(tokens["desk"])).status_code == 422
            time.sleep(3)  # several worker ticks: it does not carry out a waiting request
            assert requests_ledger.read_request(store, rid).status == RequestStatus.AWAITING_APPROVAL
            assert _state(store_dir) == before

            for name in ("desk", "aud"):  # neither a requester nor an auditor may approve
                assert c.post(f"/v1/deletion-requests/{rid}/approve", headers=_h(tokens[name])).status_code == 403
            assert c.post(f"/v1/deletion-requests/{rid}/approve").status_code == 401
            r = c.post("/v1/deletion-requests/req-20260101-000000-abcdef/approve", headers=_h(tokens["anna"]))
            assert r.status_code == 404

            # An admin may approve, but not what it filed itself.
            r = c.post("/v1/deletion-requests", json={"subject": subjects[1]}, headers=_h(tokens["ops"]))
            own = r.json()["request_id"]
            r = c.post(f"/v1/deletion-requests/{own}/approve", headers=_h(tokens["ops"]))
            assert r.status_code == 403 and "must be someone else" in r.json()["detail"]
            # A rejection needs a reason, is final and changes nothing in the store.
            assert c.post(f"/v1/deletion-requests/{own}/reject", json={}, headers=_h(tokens["ben"])).status_code == 422
            r = c.post(
                f"/v1/deletion-requests/{own}/reject", json={"reason": "not the subject"}, headers=_h(tokens["ben"])
            )
            assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
            assert r.json()["rejection"]["by"] == "ben" and _state(store_dir) == before
            got = c.get(f"/v1/deletion-requests/{own}", headers=_h(tokens["anna"])).json()  # approvers may read
            assert got["status"] == "rejected" and got["rejection"]["reason"] == "not the subject"
            assert c.post(f"/v1/deletion-requests/{own}/approve", headers=_h(tokens["anna"])).status_code == 409

            # The approver approves: its relief serves, the worker's batch carries it out.
            r = c.post(f"/v1/deletion-requests/{rid}/approve", headers=_h(tokens["anna"]))
            assert r.status_code == 200 and r.json()["status"] == "queued", r.text
            assert [a["by"] for a in r.json()["approvals"]] == ["anna"]
            _wait_for(store, rid, RequestStatus.COMPLETED)
            assert c.post(f"/v1/deletion-requests/{rid}/approve", headers=_h(tokens["ben"])).status_code == 409
            got = c.get(f"/v1/deletion-requests/{rid}", headers=_h(tokens["desk"])).json()
            assert got["decision"]["rule"] == "default" and got["requested_by"] == "desk"
            cert = c.get(f"/v1/deletion-requests/{rid}/certificate", headers=_h(tokens["aud"])).json()["certificate"]
            gov = cert["governance"]
            assert [a["by"] for a in gov["approvals"]] == ["anna"] and gov["requested_by"] == "desk"
            assert gov["identity_verification"] == "ID card checked at the desk" and cert["lineage_check"]["passed"]

            # The audit page lists what waits, with how long it waited and what is left of its deadline.
            r = c.post("/v1/deletion-requests", json={"subject": subjects[2]}, headers=_h(tokens["desk"]))
            waiting = r.json()["request_id"]
            page = c.get("/audit", headers=_h(tokens["aud"])).text
            assert "awaiting approval (1)" in page and waiting in page and "days left" in page
            assert "lineage check <span class=ok>passed" in page  # a waiting request forgets nothing yet
    finally:
        assert server.stop() == 0
    audit = [line for p in sorted((store_dir / "service" / "audit").glob("*.jsonl")) for line in p.open()]
    assert any('"403 own request"' in line and own in line for line in audit)
    assert any('"200 queued"' in line and rid in line and '"anna"' in line for line in audit)
    assert any('"200 rejected"' in line and own in line for line in audit)
    assert not any(s in line for s in subjects[:3] for line in audit)
