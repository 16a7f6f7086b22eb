"""The request runner (sisa/forgetting/runner.py) at its own level: the phase table, a resume after
an interruption at each phase, and a batch of one and a batch of many giving the versions and
certificates the CLI gives."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from sisa.pipelines import ingest, train
from sisa.storage.store import Store

from sisa.data.synthetic import make_probes, write_jsonl
from sisa.evidence import Probe
from sisa.forgetting import runner
from sisa.lineage import requests_ledger, versions
from sisa.lineage.requests_ledger import RequestMode, RequestStatus
from sisa.serving import engine
from tests.helpers import cli_args, make_cfg, one_slice_subjects, run_cli
from tests.pipelines.helpers import adapter_tensors, assert_tensors_equal
from tests.reliability.helpers import SLICES, people, subject_in_middle

S = RequestStatus
ORDER = [S.RECEIVED, S.AWAITING_APPROVAL, S.QUEUED, S.DATA_DELETED, S.RETRAINING, S.COMPLETED]
RELIEF = (*SLICES, "deletion.relief=true")


# -- the table -------------------------------------------------------------------------------------
def test_the_phase_table_reaches_every_status_in_order() -> None:
    names = [p.name for p in runner.PHASES]
    assert len(set(names)) == len(names)
    assert names[0] == "ledger" and names[-1] == "certify"
    assert (
        names.index("bridge")
        < names.index("queue")
        < names.index("delete")
        < names.index("commit")
        < names.index("purge")
    )
    # Every status sisa sets is reached (failed is an operator's, rejected an approver's: `runner.reject`),
    # each from one reached before it.
    reached = {S.RECEIVED}
    for p in runner.PHASES:
        assert reached & set(p.before), f"{p.name} takes a status no earlier phase leaves"
        if p.after is not None:
            assert all(ORDER.index(p.after) >= ORDER.index(b) for b in p.before), f"{p.name} moves a request back"
            reached.add(p.after)
    assert reached == set(S) - {S.FAILED, S.REJECTED}
    assert runner.PHASES[-1].after == S.COMPLETED
    assert {p.name for p in runner.PHASES if p.run is None} == {
        "start-retrain"
    }  # a status move, made durable before the jobs


# -- stores ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """40 records about 20 people in slices of 8, trained once (serial, untracked): version 1."""
    base = tmp_path_factory.mktemp("runner-template")
    cfg = make_cfg(base / "s", *RELIEF)
    ingest.run(cfg, [str(write_jsonl(people(), base / "people.jsonl"))])
    assert train.run(cfg).model_version == 1
    return base / "s"


def _copy(template: Path, to: Path):
    shutil.copytree(template, to)
    return make_cfg(to, *RELIEF), Store.open(str(to))


class Killed(BaseException):
    """What the crash hook raises here instead of SIGKILL: no `except Exception` sees it, so
    nothing is written after it, as after a kill."""


def _kill_at(monkeypatch, stage: str) -> None:
    def maybe_die(at: str) -> None:
        if at == stage:
            raise Killed(at)

    monkeypatch.setattr(runner, "maybe_die", maybe_die)


def _forget(store: Store, cfg, subject: str, **kw) -> runner.RequestResult:
    with store.job("test forget", cfg.store.lock_timeout_s):
        return runner.forget(store, cfg, "subject", [subject], runner.RequestOptions(mode=RequestMode.RELIEF, **kw))


def _exact(store: Store, req) -> dict[int, str]:
    return versions.read(store, req.versions["exact"]).shards


def _same_certificate(a: dict, b: dict) -> None:
    """Two certificates of the same work in two copies of a store (the request's own id and time aside)."""
    keys = ("kind", "serving_version", "checkpoints_before", "checkpoints_after", "lineage_check", "purge_check")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["lineage_check"]["passed"] and a["purge_check"]["passed"]


# -- a resume after an interruption at each phase ------------------------------------------------------
# Carried out at once, a request skips queuing; needing no approval, it skips waiting (test_approval.py).
ALONE = [p.name for p in runner.PHASES if p.name not in ("queue", "await-approval")]


@pytest.fixture(scope="module")
def uninterrupted(template, tmp_path_factory) -> dict[int, str]:
    cfg, store = _copy(template, tmp_path_factory.mktemp("runner-whole") / "s")
    subject, _, _ = subject_in_middle(store)
    req = _forget(store, cfg, subject, evidence=False).request
    assert req.status == S.COMPLETED and req.versions["relief"] != req.versions["exact"]
    return _exact(store, req)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ALONE)
def test_a_request_interrupted_after_each_phase_resumes_to_the_same_exact_version(
    template, uninterrupted, tmp_path, monkeypatch, phase
) -> None:
    cfg, store = _copy(template, tmp_path / "s")
    subject, _, _ = subject_in_middle(store)
    _kill_at(monkeypatch, f"forget-after-{phase}")
    with pytest.raises(Killed):
        _forget(store, cfg, subject, evidence=False)
    monkeypatch.undo()
    (req,) = requests_ledger.all_requests(store)
    after = next(p.after for p in runner.PHASES if p.name == phase) or S.RECEIVED
    assert req.status == after and req.errors == []  # written after the phase, nothing after it
    with store.job("test resume", cfg.store.lock_timeout_s):
        resumed = runner.resume(store, cfg)
    assert [r.request_id for r in resumed] == ([] if after == S.COMPLETED else [req.request_id])
    (done,) = requests_ledger.all_requests(store)
    assert (
        done.status == S.COMPLETED
        and done.certificate["lineage_check"]["passed"]
        and done.certificate["purge_check"]["passed"]
    )
    assert _exact(store, done) == uninterrupted and store.current_version() == done.versions["exact"]


BATCH = ["measure-before", "delete", "start-retrain", "commit", "measure-after", "purge", "certify"]


@pytest.mark.slow
@pytest.mark.parametrize("phase", BATCH)
def test_a_batch_interrupted_after_each_phase_resumes_without_committing_twice(
    template, tmp_path, monkeypatch, phase
) -> None:
    cfg, store = _copy(template, tmp_path / "s")
    for subject in sorted(one_slice_subjects(store))[:2]:
        _forget(store, cfg, subject, queue=True, evidence=False)
    _kill_at(monkeypatch, f"batch-after-{phase}")
    with store.job("test process", cfg.store.lock_timeout_s), pytest.raises(Killed):
        runner.process(store, cfg, evidence=False)
    monkeypatch.undo()
    after = next(p.after for p in runner.PHASES if p.name == phase) or S.QUEUED
    assert {r.status for r in requests_ledger.all_requests(store)} == {after}
    with store.job("test process", cfg.store.lock_timeout_s):
        res = runner.process(store, cfg, evidence=False)
    assert (res.batch_id is None) == (after == S.COMPLETED)
    batch_versions = [v for v in versions.all_versions(store) if v.reason == "forget-batch"]
    assert len(batch_versions) == 1 and store.current_version() == batch_versions[0].model_version
    assert all(
        r.status == S.COMPLETED and r.certificate["lineage_check"]["passed"]
        for r in requests_ledger.all_requests(store)
    )


# -- a batch of one, a batch of many: what the CLI gives -------------------------------------------------
@pytest.mark.slow
def test_a_batch_of_one_gives_the_version_and_certificate_sisa_forget_gives(template, tmp_path) -> None:
    cfg, store = _copy(template, tmp_path / "runner")
    _, cli_store = _copy(template, tmp_path / "cli")
    subject, _, _ = subject_in_middle(store)
    req = _forget(store, cfg, subject).request
    code, _, err = run_cli("forget", "--subject", subject, *cli_args(tmp_path / "cli", *RELIEF))
    assert code == 0, err
    (cli_req,) = requests_ledger.all_requests(cli_store)
    assert req.versions == cli_req.versions
    for n in req.versions.values():
        mine, theirs = versions.read(store, n), versions.read(cli_store, n)
        assert (mine.shards, mine.reason, mine.excluded_shards) == (
            theirs.shards,
            theirs.reason,
            theirs.excluded_shards,
        )
    _same_certificate(req.certificate, cli_req.certificate)
    assert req.purge["checkpoints"] == cli_req.purge["checkpoints"] and sorted(req.evidence) == sorted(cli_req.evidence)


@pytest.mark.slow
def test_a_batch_of_many_gives_the_version_and_certificates_sisa_process_gives(template, tmp_path) -> None:
    cfg, store = _copy(template, tmp_path / "runner")
    _, cli_store = _copy(template, tmp_path / "cli")
    subjects = sorted(one_slice_subjects(store))[:3]
    for subject in subjects:
        _forget(store, cfg, subject, queue=True, evidence=False)
        code, _, err = run_cli("forget", "--subject", subject, "--queue", *cli_args(tmp_path / "cli", *RELIEF))
        assert code == 0, err
    with store.job("test process", cfg.store.lock_timeout_s):
        res = runner.process(store, cfg)
    code, _, err = run_cli("process", *cli_args(tmp_path / "cli", *RELIEF))
    assert code == 0, err
    assert len(res.requests) == len(subjects) and all(r.status == S.COMPLETED for r in res.requests)
    mine, theirs = versions.read(store, res.model_version), versions.current(cli_store)
    assert (mine.model_version, mine.shards, mine.reason, mine.excluded_shards) == (
        theirs.model_version,
        theirs.shards,
        theirs.reason,
        theirs.excluded_shards,
    )
    by_records = {tuple(r.id_hashes): r for r in requests_ledger.all_requests(cli_store)}
    for r in res.requests:
        cli_req = by_records[tuple(r.id_hashes)]
        assert r.versions == cli_req.versions
        _same_certificate(r.certificate, cli_req.certificate)
        assert sorted(r.evidence) == sorted(cli_req.evidence)


@pytest.mark.slow
def test_a_request_carried_out_at_once_is_in_the_code_a_batch_of_one(template, tmp_path, monkeypatch) -> None:
    """The same request carried out at once, and queued then processed as a batch of one, goes
    through the one planner (`phases.plan_retrain`) with the same plan, and commits the same
    exact version: the same checkpoint ids (content addresses of the adapter, its optimizer state
    and its lineage), the same adapters tensor for tensor, the same purge and certificate."""
    from sisa.forgetting import phases

    plans: list[phases.RetrainPlan] = []
    real = phases.plan_retrain
    monkeypatch.setattr(phases, "plan_retrain", lambda *a, **kw: plans.append(real(*a, **kw)) or plans[-1])
    done = {}
    for how in ("at-once", "batch-of-one"):
        cfg, store = _copy(template, tmp_path / how)
        subject, shard, sl = subject_in_middle(store)
        if how == "at-once":
            req = _forget(store, cfg, subject, evidence=False).request
        else:
            assert _forget(store, cfg, subject, queue=True, evidence=False).request.status == S.QUEUED
            assert plans == [plans[0]]  # queued: nothing was planned yet
            with store.job("test process", cfg.store.lock_timeout_s):
                (req,) = runner.process(store, cfg, evidence=False).requests
        assert req.status == S.COMPLETED
        done[how] = (store, req)
    assert len(plans) == 2, "each run plans its retrain once, with the one planner"
    at_once, batch = plans
    assert at_once.earliest == batch.earliest == {shard: sl} and at_once.start == batch.start
    assert at_once.reused == batch.reused
    jobs = [[(t.shard_id, t.slices, t.parent_checkpoint_id, t.purpose) for t in p.tasks] for p in plans]
    assert jobs[0] == jobs[1] and jobs[0], "the same shard tasks, and some retrain happened"

    (store_a, a), (store_b, b) = done["at-once"], done["batch-of-one"]
    va, vb = versions.read(store_a, a.versions["exact"]), versions.read(store_b, b.versions["exact"])
    assert va.shards == vb.shards and va.excluded_shards == vb.excluded_shards == []
    # Only the name differs: a batch of one carried out at once commits under its own request id.
    assert (va.reason, va.request_id, vb.reason, vb.request_id) == ("forget", a.request_id, "forget-batch", b.batch_id)
    for shard_id, cid in va.shards.items():
        assert_tensors_equal(adapter_tensors(store_a, cid), adapter_tensors(store_b, cid), f"shard {shard_id}")
    assert a.versions["relief"] == b.versions["relief"] and _jobs(a) == _jobs(b) and _jobs(a)
    assert a.purge["checkpoints"] == b.purge["checkpoints"] and a.purge["versions"] == b.purge["versions"]
    _same_certificate(a.certificate, b.certificate)


def _jobs(req) -> list[dict]:
    """The shard jobs a request records, their times aside."""
    return [{k: v for k, v in job.items() if k != "wall_s"} for job in req.retrained]


# -- the evidence's models ------------------------------------------------------------------------------
def _fast_with_evidence(store: Store, cfg, subject: str, strangers: int, **kw):
    """A --fast forget of the subject with every evidence measure: probes of their facts and a
    holdout of `strangers` people no shard saw."""
    rows = [r for r in people() if r["subject_id"] == subject]
    with store.job("test forget", cfg.store.lock_timeout_s):
        options = runner.RequestOptions(
            mode=RequestMode.FAST,
            holdout=([r["text"] for r in people(strangers, start=100)], None),
            probes=[Probe(**p) for p in make_probes(rows)],
        )
        return runner.forget(store, cfg, "subject", [subject], options, **kw).request


@pytest.mark.slow
def test_the_evidence_of_a_request_loads_the_base_once_and_each_checkpoint_once(template, tmp_path, monkeypatch):
    """A --fast request with probes and a holdout measures the version before, the approximate and
    the exact one (losses, the trio, leak@k, membership): one base model for all of it, and each
    checkpoint's adapter read once, not once per measure (issue 22: ~11 loads a request)."""
    cfg, store = _copy(template, tmp_path / "s")
    subject, _, _ = subject_in_middle(store)
    loads: list[str] = []
    real = engine.load_base_model
    monkeypatch.setattr(engine, "load_base_model", lambda model_cfg: loads.append(model_cfg.name) or real(model_cfg))
    pool = engine.EnsemblePool()
    req = _fast_with_evidence(store, cfg, subject, strangers=2, models=pool)
    measured = req.evidence["versions"]
    assert {"before", "approximate", "exact"} <= set(measured) and "membership" in measured["exact"]
    assert loads == ["tiny"] and pool.base_loads == 1
    seen = {c for n in req.versions.values() for c in versions.read(store, n).shards.values()}
    seen |= set(versions.read(store, req.version_before).shards.values())
    assert pool.adapter_loads == len(seen)
    # The purge took the tainted checkpoints' adapters out of the pool too, not only off disk.
    assert req.purge["checkpoints"] and not pool.checkpoint_ids() & set(req.purge["checkpoints"])


@pytest.mark.slow
def test_the_evidence_before_the_exact_version_is_measured_beside_the_retrain(template, tmp_path, monkeypatch):
    """Carried out at once on Ray, a --fast request's versions before and approximate are measured
    (the evidence's measures and the caller's `on_version`) on a thread of their own while the
    shard jobs retrain, and the exact version's after them; the numbers are the serial run's,
    where the same work comes first, as on Ray with `evidence.beside_retrain=false`."""
    from sisa.forgetting import phases
    from sisa.training.scheduler import shutdown_ray

    threads: list[str] = []
    real = phases.evidence.measure
    monkeypatch.setattr(
        phases.evidence, "measure", lambda *a, **kw: threads.append(threading.current_thread().name) or real(*a, **kw)
    )
    got = {}
    try:
        for label, backend, extra in (
            ("serial", "serial", ()),
            ("ray", "ray", ()),
            ("ray, turned off", "ray", ("evidence.beside_retrain=false",)),
        ):
            root = tmp_path / label.replace(", ", "-").replace(" ", "-")
            shutil.copytree(template, root)
            cfg, store = make_cfg(root, *RELIEF, *extra, backend=backend), Store.open(str(root))
            subject, _, _ = subject_in_middle(store)
            seen: list[tuple[str, str]] = []

            def on_version(kind: str, entry, seen=seen) -> None:
                seen.append((kind, threading.current_thread().name))

            req = _fast_with_evidence(store, cfg, subject, strangers=3, on_version=on_version)
            assert req.status == S.COMPLETED and req.certificate["purge_check"]["passed"]
            got[label] = (req.evidence, list(threads), seen)
            threads.clear()
    finally:
        shutdown_ray()
    main = threading.main_thread().name
    for alone in ("serial", "ray, turned off"):
        assert got[alone][1] == [main] * 3 and [t for _, t in got[alone][2]] == [main, main]
    beside = "sisa-evidence-beside-retrain"
    assert got["ray"][1] == [beside, beside, main]  # before, approximate; exact
    assert got["ray"][2] == [("approximate", beside), ("exact", main)]
    assert set(got["ray"][0]["versions"]) == {"before", "approximate", "exact"}
    ray, serial = got["ray"][0], got["serial"][0]
    # The fast path's NPO steps run in this process on however many threads torch has here, so
    # the approximate version may differ in float rounding; the others are the same checkpoints.
    assert ray["versions"]["before"] == serial["versions"]["before"]
    assert ray["versions"]["exact"] == serial["versions"]["exact"]
    assert ray["versions"]["approximate"].keys() == serial["versions"]["approximate"].keys()
    same = {k for k in serial if k not in ("versions", "loss_fast_path", "holdout_fast_path")}
    assert same >= {"loss_before", "loss_after", "holdout_before", "holdout_after"}
    assert {k: ray[k] for k in same} == {k: serial[k] for k in same}
    assert ray["loss_fast_path"] == pytest.approx(serial["loss_fast_path"], rel=1e-3)
