"""Four eyes at the runner's level (sisa/forgetting/runner.py: `approve`, `reject`): a request whose
rule asks for approvers waits with nothing served or destroyed, neither `process` nor `resume`
carries it out, its requester cannot approve it, enough distinct approvers carry it out from the
version serving then, a rejection changes nothing in the store; the default policy decides as
before, and the certificate names the rule and the approvals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sisa.pipelines import ingest, train
from sisa.storage import layout
from sisa.storage.errors import RefusedError, ValidationError
from sisa.storage.store import Store

from sisa.data.synthetic import write_jsonl
from sisa.forgetting import corrections, runner
from sisa.forgetting.certificate import make_certificate
from sisa.lineage import requests_ledger, versions
from sisa.lineage.requests_ledger import RequestMode, RequestStatus
from tests.helpers import make_cfg, tree_digest
from tests.reliability.helpers import SLICES, people, subject_in_middle

S = RequestStatus
RELIEF = (*SLICES, "deletion.relief=true")
ALWAYS = (*RELIEF, "deletion.approval=always")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """40 records about 20 people in slices of 8, trained once (serial, untracked): version 1."""
    base = tmp_path_factory.mktemp("approval-template")
    cfg = make_cfg(base / "s", *RELIEF)
    ingest.run(cfg, [str(write_jsonl(people(), base / "people.jsonl"))])
    assert train.run(cfg).model_version == 1
    return base / "s"


def _copy(template: Path, to: Path, *extra: str):
    shutil.copytree(template, to)
    return make_cfg(to, *extra), Store.open(str(to))


def _state(store_dir: Path) -> dict[str, str]:
    """Records, index, checkpoints (adapters), versions and what serves: all but the ledger of
    requests, the service's files and lock files."""
    keep = ("data", "index", "checkpoints", "versions", "CURRENT", "corrections", "ingests")
    return {k: v for k, v in tree_digest(store_dir).items() if k.split("/")[0] in keep}


def _forget(store: Store, cfg, subject: str, by: str = "alice", **kw) -> runner.RequestResult:
    with store.job("test forget", cfg.store.lock_timeout_s):
        filer = runner.Filer(by, kw.pop("iv", None))
        options = runner.RequestOptions(mode=RequestMode.RELIEF, filer=filer, **kw)
        return runner.forget(store, cfg, "subject", [subject], options)


def _approve(store: Store, cfg, request_id: str, by: str, at_once: bool = True):
    with store.job("test approve", cfg.store.lock_timeout_s):
        return runner.approve(store, cfg, request_id, by, at_once=at_once)


def test_the_default_policy_records_its_rule_and_decides_as_before(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s", *RELIEF, "unlearning.deadline_days=9")
    subject, _, _ = subject_in_middle(store)
    req = _forget(store, cfg, subject, evidence=False).request
    assert req.status == S.COMPLETED and req.mode == RequestMode.RELIEF and req.approvals == []
    assert (req.decision.rule, req.decision.approvers, req.decision.deadline_days) == ("default", 0, 9)
    assert req.decision.facts == {
        "kind": "forget",
        "selector": "subject",
        "certainty": "exact",
        "records": req.records,
        "subjects": 1,
        "shards": 1,
    }
    gov = req.certificate["governance"]
    assert gov["rule"] == "default" and gov["approvals"] == [] and gov["requested_by"] == "alice"


def test_a_request_waits_for_a_second_person_then_completes_from_what_serves_then(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s", *ALWAYS)
    subject, shard, _ = subject_in_middle(store)
    before = _state(tmp_path / "s")
    req = _forget(store, cfg, subject, iv="passport checked at the front desk").request
    assert req.status == S.AWAITING_APPROVAL and req.needs_approval and req.versions == {}
    assert _state(tmp_path / "s") == before  # nothing served, nothing destroyed
    assert set(store.index.table["status"].to_pylist()) == {"live"}  # not marked `forgetting`
    # Neither a batch nor a resume carries it out; it blocks no other request.
    with store.job("test process", cfg.store.lock_timeout_s):
        assert runner.process(store, cfg).batch_id is None
        assert runner.resume(store, cfg) == []
    assert _state(tmp_path / "s") == before
    other = next(s for s in sorted(set(store.index.live()["subject_id"].to_pylist())) if s != subject)
    assert _forget(store, cfg, other, by="bob").request.status == S.AWAITING_APPROVAL
    # Its requester may not approve it; nothing changes.
    with pytest.raises(runner.SelfApprovalError, match="someone else"):
        _approve(store, cfg, req.request_id, "alice")
    assert requests_ledger.read_request(store, req.request_id).approvals == []
    # Another version serves meanwhile (the other request, approved): the first is carried out from it.
    bobs = next(r for r in requests_ledger.all_requests(store) if r.requested_by == "bob")
    _approve(store, cfg, bobs.request_id, "carol")
    serving_then = store.current_version()
    done = _approve(store, cfg, req.request_id, "bob")
    assert done.status == S.COMPLETED and done.version_before == serving_then
    assert [a["by"] for a in done.approvals] == ["bob"]
    assert done.certificate["lineage_check"]["passed"] and done.certificate["purge_check"]["passed"]
    gov = done.certificate["governance"]
    assert gov["approvals"][0]["by"] == "bob" and gov["requested_by"] == "alice" and gov["approvers_needed"] == 1
    assert gov["identity_verification"] == "passport checked at the front desk" and gov["rule"] == "default"
    assert subject not in set(store.index.table["subject_id"].to_pylist())
    # Approving it again: it does not wait any more.
    with pytest.raises(RefusedError, match="not awaiting approval"):
        _approve(store, cfg, req.request_id, "dave")


def test_a_rule_that_asks_for_two_approvers_needs_two_distinct_ones(template, tmp_path):
    policy_file = tmp_path / "two.yaml"
    policy_file.write_text("rules:\n  - name: two-people\n    approvers: 2\n")
    cfg, store = _copy(template, tmp_path / "s", *RELIEF, f"deletion.policy={policy_file}")
    subject, _, _ = subject_in_middle(store)
    req = _forget(store, cfg, subject, queue=True).request
    assert req.status == S.AWAITING_APPROVAL and req.decision.rule == "two-people"
    assert req.decision.policy == str(policy_file)
    with store.lock("test", cfg.store.lock_timeout_s):
        once = runner.approve(store, cfg, req.request_id, "bob")
        assert once.status == S.AWAITING_APPROVAL and len(once.approvals) == 1
        with pytest.raises(RefusedError, match="approved request .* already"):
            runner.approve(store, cfg, req.request_id, "bob")
        twice = runner.approve(store, cfg, req.request_id, "carol")
    # Filed with --queue: approved, its relief serves and it is queued for the next batch.
    assert twice.status == S.QUEUED and twice.versions["relief"] == store.current_version()
    with store.job("test process", cfg.store.lock_timeout_s):
        batch = runner.process(store, cfg)
    (done,) = batch.requests
    assert done.status == S.COMPLETED and [a["by"] for a in done.certificate["governance"]["approvals"]] == [
        "bob",
        "carol",
    ]


def test_a_rejection_is_final_and_changes_nothing_in_the_store(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s", *ALWAYS)
    subject, _, _ = subject_in_middle(store)
    before, serving = _state(tmp_path / "s"), store.current_version()
    req = _forget(store, cfg, subject).request
    with store.lock("test", cfg.store.lock_timeout_s):
        with pytest.raises(runner.SelfApprovalError):
            runner.reject(store, cfg, req.request_id, "alice", "changed my mind")
        with pytest.raises(ValidationError, match="reason"):
            runner.reject(store, cfg, req.request_id, "bob", "  ")
        rejected = runner.reject(store, cfg, req.request_id, "bob", "identity not verified")
        with pytest.raises(RefusedError, match="rejected, not awaiting approval"):
            runner.approve(store, cfg, req.request_id, "carol")
    assert rejected.status == S.REJECTED and rejected.status.is_terminal
    entry = requests_ledger.read_request(store, req.request_id)
    assert entry.rejection["by"] == "bob" and entry.rejection["reason"] == "identity not verified"
    assert _state(tmp_path / "s") == before and store.current_version() == serving
    with store.job("test process", cfg.store.lock_timeout_s):
        assert runner.process(store, cfg).batch_id is None
    # The same person may be asked for again, in a new request.
    assert _forget(store, cfg, subject).request.status == S.AWAITING_APPROVAL


def test_a_relief_the_rule_lets_serve_while_waiting_is_rolled_back_on_rejection(template, tmp_path):
    policy_file = tmp_path / "relief.yaml"
    policy_file.write_text(
        "rules:\n  - name: relief-first\n    method: relief\n    approvers: 1\n    relief_before_approval: true\n"
    )
    cfg, store = _copy(template, tmp_path / "s", *RELIEF, f"deletion.policy={policy_file}")
    subject, shard, _ = subject_in_middle(store)
    serving = store.current_version()
    req = _forget(store, cfg, subject).request
    assert req.status == S.AWAITING_APPROVAL and req.versions["relief"] == store.current_version() != serving
    assert versions.current(store).shards[shard] != versions.read(store, serving).shards[shard]
    with store.lock("test", cfg.store.lock_timeout_s):
        runner.reject(store, cfg, req.request_id, "bob", "not the data subject")
    assert store.current_version() == serving  # what served before it serves again


def test_a_rejected_rectification_leaves_no_staged_text(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s", *ALWAYS)
    target = store.index.live().to_pylist()[0]
    table, problems = corrections.from_rows([{"record_id": target["record_id"], "text": "A corrected sentence."}], cfg)
    with store.job("test rectify", cfg.store.lock_timeout_s):
        options = runner.RequestOptions(mode=RequestMode.RELIEF, filer=runner.Filer("alice"))
        req = runner.rectify(store, cfg, table, problems, options).request
    assert req.status == S.AWAITING_APPROVAL and store.fs.exists(layout.correction_file(req.request_id))
    with store.lock("test", cfg.store.lock_timeout_s):
        runner.reject(store, cfg, req.request_id, "bob", "the old value was right")
    assert not store.fs.exists(layout.correction_file(req.request_id))


def test_the_identity_attestation_is_capped_names_no_one_and_stays_out_of_the_request_hash(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s", *RELIEF)
    subject, _, _ = subject_in_middle(store)
    for text, why in (("x" * 501, "1-500 characters"), (f"called {subject} back", "names a record id")):
        with pytest.raises(ValidationError, match=why):
            _forget(store, cfg, subject, iv=text)
    with pytest.raises(ValidationError, match="requester's name"):
        _forget(store, cfg, subject, by="not a name")
    assert requests_ledger.all_requests(store) == []
    with store.lock("test", cfg.store.lock_timeout_s):
        options = runner.RequestOptions(mode=RequestMode.RELIEF, dry_run=True, filer=runner.Filer("alice", "ok"))
        planned = runner.forget(store, cfg, "subject", [subject], options)
    assert planned.decision.rule == "default" and requests_ledger.all_requests(store) == []
    req = _forget(store, cfg, subject, iv="ID card shown", evidence=False).request
    bare = requests_ledger.read_request(store, req.request_id)
    bare.identity_verification, bare.requested_by = None, None
    assert make_certificate(store, bare)["request_sha256"] == req.certificate["request_sha256"]


def test_a_request_killed_once_it_waits_stays_waiting_and_is_approved_as_any(template, tmp_path, monkeypatch):
    cfg, store = _copy(template, tmp_path / "s", *ALWAYS)
    subject, _, _ = subject_in_middle(store)

    class Killed(BaseException):
        pass

    def maybe_die(at: str) -> None:
        if at == "forget-after-await-approval":
            raise Killed(at)

    monkeypatch.setattr(runner, "maybe_die", maybe_die)
    with pytest.raises(Killed):
        _forget(store, cfg, subject)
    monkeypatch.undo()
    (req,) = requests_ledger.all_requests(store)
    assert req.status == S.AWAITING_APPROVAL and req.errors == []
    with store.job("test resume", cfg.store.lock_timeout_s):
        assert runner.resume(store, cfg) == []  # nothing to finish: it waits for an approver
    done = _approve(store, cfg, req.request_id, "bob")
    assert done.status == S.COMPLETED and done.certificate["lineage_check"]["passed"]
