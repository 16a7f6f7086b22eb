"""The request runner: one table of phases, one loop that drives any number of requests through it.

    phase           takes a request in     leaves it in   what it does (sisa/forgetting/phases.py)
    ledger          received (a new one)   received       durable before anything is destroyed
    await-approval  received (its rule     awaiting_      waits for approvers (`approve`, `reject`);
                    asks for approvers)    approval       the relief serves if the rule allows it
    measure-before  received, queued       (same)         evidence under the version that served when it came *
    bridge          received (not exact)   received       relief, --fast or --isolate serves until the exact version
    measure-bridge  received (a bridge)    received       the records' loss and the evidence under the bridge *
    queue           received (--queue)     queued         records marked `forgetting` (`rectifying`); a batch goes on
    delete          received, queued       data_deleted   records erased (a rectification: text replaced)
    start-retrain   data_deleted           retraining     durable before the shard jobs start
    commit          retraining             retraining     affected shards retrain; the exact version; MLflow follows
    measure-after   retraining             retraining     evidence under the exact version
    purge           retraining             retraining     tainted checkpoints, versions, MLflow runs, caches
    certify         retraining             completed      lineage and purge checks, the certificate

    * carried out at once: queued (`Run.later`) and done beside the shard jobs of `commit`, on the
      core they leave this process (sisa/forgetting/deferred.py); before measure-after and purge.

Deletions and rectifications (a request's `kind`) go the same way. `forget` and `rectify` carry
a new request out at once: a batch of one, whose versions are named by its request id, planned
by the one planner every batch uses (`phases.plan_retrain`); with `queue` it stops once queued.
What a caller chooses about a new request is a `RequestOptions` (sisa/forgetting/options.py).
`process` carries out every queued request as one batch (one retrain per affected shard, one
version, one purge, a certificate each): `sisa process`, `sisa train` (`train_store`) and the
service's worker run it. `resume` finishes what a crash cut short. Each new request is decided
by the policy first (sisa/forgetting/policy.py: method, approvers, deadline); one that waits for
approvers is carried out, once `approve`d, by a batch (of one with `sisa approve`), from the
version serving then; `reject` ends it, changing nothing in the store. The runner is the only
writer of a request's ledger entry: after each phase, and the moment a phase commits a version
(before MLflow is told). After each phase that did something it passes the crash-injection hook
`<forget|batch>-after-<phase>` (storage/faults.py). What blocks new work is
`requests_ledger.unfinished_requests`, asked by every writer.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from sisa.config import SisaConfig
from sisa.evidence import measures as evidence
from sisa.evidence.probes import Probe
from sisa.forgetting import corrections, phases, policy, rollback, selection
from sisa.forgetting.options import Filer, RequestOptions
from sisa.forgetting.phases import InFlight, Run
from sisa.forgetting.record_texts import read_texts
from sisa.lineage import checkpoints, requests_ledger, versions
from sisa.lineage.requests_ledger import (
    IDENTITY_VERIFICATION_MAX,
    Decision,
    DeletionPlan,
    DeletionRequest,
    RequestKind,
    RequestMode,
    RequestStatus,
    VersionKind,
)
from sisa.lineage.versions import ModelVersion
from sisa.serving import engine
from sisa.storage.errors import RefusedError, ValidationError
from sisa.storage.faults import maybe_die
from sisa.storage.store import Store, now_iso
from sisa.training import chain
from sisa.training import run as training
from sisa.training.shard_job import ShardResult

S = RequestStatus
PhaseFn = Callable[[Store, SisaConfig, Run, list[InFlight]], None]


@dataclass(frozen=True)
class Phase:
    name: str
    before: tuple[RequestStatus, ...]  # the statuses it takes a request in
    after: RequestStatus | None  # the status it leaves it in (None: as it was)
    run: PhaseFn | None  # None: only the status moves
    takes: Callable[[InFlight], bool] = lambda it: True  # which of those requests it takes
    stops: bool = False  # the requests it took go no further in this run (a batch takes them on)


PHASES: tuple[Phase, ...] = (
    Phase("ledger", (S.RECEIVED,), S.RECEIVED, phases.record, lambda it: it.new),
    Phase(
        "await-approval",
        (S.RECEIVED,),
        S.AWAITING_APPROVAL,
        phases.await_approval,
        lambda it: it.request.needs_approval,
    ),
    Phase("measure-before", (S.RECEIVED, S.QUEUED), None, phases.measure_before),
    Phase("bridge", (S.RECEIVED,), S.RECEIVED, phases.bridge, lambda it: it.request.mode != RequestMode.EXACT),
    Phase("measure-bridge", (S.RECEIVED,), S.RECEIVED, phases.measure_bridge, lambda it: it.bridge is not None),
    Phase("queue", (S.RECEIVED,), S.QUEUED, phases.enqueue, lambda it: it.request.queued, stops=True),
    Phase("delete", (S.RECEIVED, S.QUEUED), S.DATA_DELETED, phases.delete),
    Phase("start-retrain", (S.DATA_DELETED,), S.RETRAINING, None),
    Phase("commit", (S.RETRAINING,), S.RETRAINING, phases.commit),
    Phase("measure-after", (S.RETRAINING,), S.RETRAINING, phases.measure_after),
    Phase("purge", (S.RETRAINING,), S.RETRAINING, phases.purge_tainted),
    Phase("certify", (S.RETRAINING,), S.COMPLETED, phases.certify),
)


def carry_out(
    store: Store, cfg: SisaConfig, run: Run, items: list[InFlight], until: str | None = None
) -> list[DeletionRequest]:
    """Drive the requests through every phase they have not finished (with `until`, no further
    than that phase), writing each to the ledger after each phase; a request the queue phase takes
    stops there (a batch carries it out). A run with no batch id carries one request: a batch of
    one. On an error the requests stay open and resumable (the error's type and message,
    never record text, go into each entry); the serving version is whatever was committed last.
    Retrains run under the store's own training config whatever `cfg` says (sisa/training/chain.py)."""
    cfg = chain.chain_config(store, cfg, run.log)
    assert run.batch_id is not None or len(items) == 1, "a run without a batch id is a batch of one"
    run.name = run.batch_id or items[0].request.request_id
    carried = list(items)
    try:
        for phase in PHASES[: [p.name for p in PHASES].index(until) + 1] if until else PHASES:
            group = [it for it in carried if it.request.status in phase.before and phase.takes(it)]
            if not group:
                continue
            if phase.run is not None:
                phase.run(store, cfg, run, group)
            for it in group:
                if phase.after is not None and it.request.status != phase.after:
                    it.request.move_to(phase.after)
                _save(store, it)
            maybe_die(f"{run.fault_prefix}-after-{phase.name}")
            if phase.stops:
                carried = [it for it in carried if all(it is not taken for taken in group)]
    except Exception as e:
        for it in carried:
            if not it.new:
                it.request.errors.append(
                    {"at": now_iso(), "error": f"{type(e).__name__}: {getattr(e, 'message', '')[:300]}"}
                )
                _save(store, it)
        raise
    return [it.request for it in items]


def _save(store: Store, it: InFlight) -> None:
    requests_ledger.write_request(store, it.request)


def new_run(store: Store, **kw: Any) -> Run:
    """A run whose phases save a request through the runner (see `phases.Run`)."""
    return Run(save=lambda it: _save(store, it), **kw)


# -- a request filed and carried out at once (the CLI, the service, the demo) ------------------
@dataclass
class RequestResult:
    """What filing a deletion or a rectification gave: the request, or a no-op / dry run's plan."""

    noop: bool = False
    dry_run: bool = False
    plan: DeletionPlan | None = None
    request: DeletionRequest | None = None
    already_deleted: int = 0
    missing: int = 0
    replayed: bool = False  # an idempotency key named an earlier request: this is that one
    decision: Decision | None = None  # a dry run: the rule that would decide it

    def to_dict(self) -> dict[str, Any]:
        if self.request is not None:
            return {"request_id": self.request.request_id, "request": self.request.to_dict()}
        out: dict[str, Any] = {"plan": self.plan.to_dict() if self.plan else None}
        if self.decision is not None:
            out["decision"] = self.decision.to_dict()
        if self.noop:
            out |= {"noop": True, "already_deleted": self.already_deleted, "missing": self.missing}
        if self.dry_run:
            out["dry_run"] = True
        return out


def check_name(name: str, what: str) -> str:
    """A requester's or approver's name as the ledger records it (the rules of a token's name)."""
    name = (name or "").strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValidationError(f"{what} should be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
    return name


def _check_filer(filer: Filer, sel: selection.Selection) -> None:
    """The attestation is free text, capped, and must not name what the ledger keeps only as keyed
    hashes (the selected ids, their subjects, the selector's values)."""
    if filer.name is not None:
        check_name(filer.name, "the requester's name")
    text = filer.identity_verification
    if text is None:
        return
    if not text.strip() or len(text) > IDENTITY_VERIFICATION_MAX:
        raise ValidationError(
            f"identity_verification should be 1-{IDENTITY_VERIFICATION_MAX} characters, got {len(text)}; "
            "nothing was changed"
        )
    named = {*sel.values, *sel.rows["record_id"].to_pylist(), *(s for s in sel.rows["subject_id"].to_pylist() if s)}
    if any(len(v) >= 3 and v in text for v in named):
        raise ValidationError(
            "identity_verification names a record id, subject or selector value of this request: say how the "
            "identity was verified, not whose (the ledger keeps keyed hashes only); nothing was changed"
        )


def _note_rule(log: Callable[[str], None] | None, decision: Decision, asked: RequestMode) -> None:
    """Say so when the policy's rule chose another method than the request asked for."""
    if log is not None and decision.method != asked.value:
        log(f"rule `{decision.rule}` of the policy decides method {decision.method} (asked: {asked.value})")


def _decide(
    cfg: SisaConfig, kind: RequestKind, sel: selection.Selection, plan: DeletionPlan, asked: RequestMode
) -> Decision:
    subjects = len({s for s in sel.rows["subject_id"].to_pylist() if s})
    facts = policy.facts_of(kind, sel.kind, plan, subjects, asked)
    return policy.decide(policy.load_policy(cfg), cfg, facts, asked)


def new_request(
    store: Store,
    cfg: SisaConfig,
    sel: selection.Selection,
    plan: DeletionPlan,
    mode: RequestMode,
    queue: bool,
    key_hash: str | None,
    decision: Decision | None = None,
    filer: Filer | None = None,
) -> DeletionRequest:
    """A deletion request for the selected records (not in the ledger yet), as `decision` (the
    policy's rule; by default decided here for a deletion that asked for `mode`) says."""
    decision = decision or _decide(cfg, RequestKind.FORGET, sel, plan, mode)
    filer = filer or Filer()
    mode = RequestMode(decision.method)
    if mode == RequestMode.ISOLATE:
        serving_version = versions.current(store)
        if serving_version is not None and not set(serving_version.shards) - set(plan.shard_ids):
            raise RefusedError(
                "--isolate needs at least one unaffected shard to serve; every shard holds some of these records"
            )
    received = datetime.now(UTC)
    ids = sel.rows["record_id"].to_pylist()
    version_before, checkpoints_before = _serving(store)
    req = DeletionRequest(
        request_id=f"req-{received:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
        selector={
            "kind": sel.kind,
            "value_hashes": requests_ledger.selector_hashes(store, sel.kind, sel.values),
            "value_hash": store.hash_id("\n".join(sorted(sel.values))),
        },
        id_hashes=sorted(store.hash_ids(ids)),
        # So that a later --subject for a person whose records all went by id is a no-op too.
        subject_hashes=requests_ledger.selector_hashes(
            store, "subject", sorted({s for s in sel.rows["subject_id"].to_pylist() if s})
        ),
        records=len(ids),
        missing_skipped=len(sel.missing),
        received_at=received.isoformat(timespec="milliseconds"),
        deadline=(received + timedelta(days=decision.deadline_days)).isoformat(timespec="milliseconds"),
        mode=mode,
        plan=plan,
        version_before=version_before,
        checkpoints_before=checkpoints_before,
        queued=queue,
        idempotency_key_hash=key_hash,
        decision=decision,
        requested_by=filer.name,
        identity_verification=filer.identity_verification,
    )
    req.history.append({"status": req.status.value, "at": now_iso()})
    return req


def _serving(store: Store) -> tuple[int | None, list[dict[str, Any]]]:
    """The serving version and its checkpoints with their adapters' sha256: a request's "before",
    recorded when it is filed (after the purge, the tainted ones no longer exist to be read)."""
    current = versions.current(store)
    return current.model_version if current else None, [
        {"shard_id": s, "checkpoint_id": c, "adapter_sha256": checkpoints.adapter_sha256(store, c)}
        for s, c in sorted(versions.shard_checkpoints(current).items())
    ]


def forget(
    store: Store,
    cfg: SisaConfig,
    kind: str,
    values: list[str],
    options: RequestOptions | None = None,
    *,
    log: Callable[[str], None] | None = None,
    on_version: Callable[[str, ModelVersion], None] | None = None,
    models: engine.EnsemblePool | None = None,
) -> RequestResult:
    """Forget the records `kind` (ids, subject, source, ingest_id) and `values` select. Select,
    validate, plan and decide (the policy's rule); then (unless `options.dry_run`) record the
    request and carry it out, a batch of one, or with `options.queue` leave it queued for a batch,
    or leave it awaiting approval when its rule asks for approvers. The caller holds the store lock
    (the jobs lock too, unless queued or a dry run). A request filed again with the same
    `options.idempotency_key` returns the first one, whatever became of it. `log` hears progress,
    `on_version(kind, version)` each version committed (while the text is still in memory);
    `models`: the caller's ensemble pool for the evidence (the demo measures the same versions),
    else the run's own."""
    o = options or RequestOptions()
    key_hash, replayed = _admit(store, cfg, o.idempotency_key, o.dry_run, o.queue)
    if replayed is not None:
        return replayed
    sel = selection.select_records(store, kind, values)
    if sel.missing and not o.allow_missing:
        raise ValidationError(
            f"{selection.describe_missing(sel)}; nothing was changed (pass --allow-missing to skip them)"
        )
    if sel.rectifying:
        raise RefusedError(
            f"{selection.describe_rectifying(sel)} (it keeps the records, with new text), then forget them; "
            "nothing was changed"
        )
    plan = selection.plan_selection(store, cfg, sel)
    if sel.rows.num_rows == 0:
        return RequestResult(noop=True, plan=plan, already_deleted=len(sel.already_deleted), missing=len(sel.missing))
    _check_filer(o.filer, sel)
    decision = _decide(cfg, RequestKind.FORGET, sel, plan, o.mode)
    if o.dry_run:
        return RequestResult(dry_run=True, plan=plan, decision=decision)
    req = new_request(store, cfg, sel, plan, o.mode, o.queue, key_hash, decision, o.filer)
    _note_rule(log, decision, o.mode)
    item = InFlight(req, sel.rows, new=True)
    # A queued request returns at once: its evidence is measured by the batch, while the text is
    # still in the store and the versions before and relief still exist. So does one that waits
    # for approval: once approved, a batch carries it out.
    if o.evidence and not o.queue and not req.needs_approval:
        item.texts, item.prompts = read_texts(store, sel.rows)
        item.holdout = o.holdout
        item.targets = _targets(cfg, item, o.probes)
    return _carry_new(store, cfg, item, on_version, log, models)


def rectify(
    store: Store,
    cfg: SisaConfig,
    fix_table: pa.Table,
    problems: list[str] | None = None,
    options: RequestOptions | None = None,
    *,
    log: Callable[[str], None] | None = None,
    on_version: Callable[[str, ModelVersion], None] | None = None,
) -> RequestResult:
    """Correct records' text exactly: validate every correction first (one error naming every
    bad id, nothing changed), plan as for a deletion of the records, stage the new text, record
    the request (kind `rectify`) and carry it out, a batch of one, or with `options.queue` leave
    it queued for a batch (relief serving; the records `rectifying`). The caller holds the store
    lock. A request filed again with the same `options.idempotency_key` returns the first one.
    `options.allow_missing` does not apply: every correction must name a live record."""
    o = options or RequestOptions()
    if o.allow_missing:
        raise ValidationError("allow_missing applies to forget only: every correction must name a live record")
    key_hash, replayed = _admit(store, cfg, o.idempotency_key, o.dry_run, o.queue)
    if replayed is not None:
        return replayed
    fix = corrections.validate(store, cfg, fix_table, problems)
    sel = selection.Selection("ids", fix.ids, fix.rows)
    plan = selection.plan_selection(store, cfg, sel, removes=False)
    _check_filer(o.filer, sel)
    decision = _decide(cfg, RequestKind.RECTIFY, sel, plan, o.mode)
    if o.dry_run:
        return RequestResult(dry_run=True, plan=plan, decision=decision)
    req = new_request(store, cfg, sel, plan, o.mode, o.queue, key_hash, decision, o.filer)
    _note_rule(log, decision, o.mode)
    req.kind = RequestKind.RECTIFY
    req.record_hashes = req.id_hashes
    req.rectified = fix.content_hashes(store)
    req.id_hashes = sorted(c["old"] for c in req.rectified)  # what is forgotten: the old content
    req.subject_hashes = []  # the subjects stay: nothing about them is forgotten
    item = InFlight(req, sel.rows, new=True, fix=fix)
    # Queued (or awaiting approval): the batch measures the old text's loss (the measure-before phase).
    if o.evidence and not o.queue and not req.needs_approval:
        item.texts, item.prompts, new = corrections.old_and_new(store, fix)  # in memory only
        item.holdout = o.holdout
        item.targets = _targets(cfg, item, o.probes, new)
    return _carry_new(store, cfg, item, on_version, log)


def _admit(
    store: Store, cfg: SisaConfig, idempotency_key: str | None, dry_run: bool, queue: bool
) -> tuple[str | None, RequestResult | None]:
    """The keyed hash of the idempotency key, and what to answer at once when it names an earlier
    request; refused while unfinished work blocks a new request. An earlier request whose filing
    a crash cut short (in the ledger, not yet queued: its client never heard back) is filed to
    the end now, as `resume` would, so the answer is the queued request with its relief serving."""
    key_hash, earlier = _replay(store, idempotency_key)
    if earlier is not None:
        if not dry_run and earlier.queued and earlier.status == S.RECEIVED:
            (earlier,) = _resume_one(store, cfg, earlier, lambda msg: None)
        return key_hash, RequestResult(request=earlier, replayed=True)
    if not dry_run:
        requests_ledger.refuse_unfinished(store, "a new request", with_batch=queue)
    return key_hash, None


def _carry_new(
    store: Store,
    cfg: SisaConfig,
    item: InFlight,
    on_version: Callable[[str, ModelVersion], None] | None,
    log: Callable[[str], None] | None,
    models: engine.EnsemblePool | None = None,
) -> RequestResult:
    """A new request, a batch of one, through the phases (with `queue`, until it is queued)."""
    req, log = item.request, log or (lambda msg: None)
    kind = " (rectify)" if req.kind == RequestKind.RECTIFY else ""
    shards = req.plan.shard_ids if req.plan else []
    cost = req.plan.cost_fraction if req.plan else 0.0
    where = f"{req.records} record(s) in shard(s) {shards}"
    log(f"request {req.request_id}{kind}: {where} (retrain cost {cost:.1%} of a full retrain)")
    run = new_run(store, on_version=on_version or (lambda kind, entry: None), log=log)
    run.models = models or run.models
    carry_out(store, cfg, run, [item])
    return RequestResult(request=req)


def _replay(store: Store, idempotency_key: str | None) -> tuple[str | None, DeletionRequest | None]:
    """The keyed hash of a client's idempotency key, and the request filed with it before (if any)."""
    if not idempotency_key:
        return None, None
    key_hash = store.hash_id(f"idempotency\x00{idempotency_key}")
    return key_hash, next((r for r in requests_ledger.all_requests(store) if r.idempotency_key_hash == key_hash), None)


def _targets(
    cfg: SisaConfig, item: InFlight, probes: tuple[Probe, ...] | None, new: list[tuple[Any, str | None]] | None = None
) -> evidence.Targets:
    """The trio and leak@k (k: `evidence.leak_k`) with --probes; membership inference with a holdout."""
    subjects = {s for s in item.rows["subject_id"].to_pylist() if s}
    holdout = item.holdout[0] if item.holdout else None
    return evidence.build_targets(
        item.texts,
        item.prompts,
        list(probes or ()),
        subjects,
        holdout,
        new,
        with_trio=probes is not None,
        leak_k=cfg.evidence.leak_k,
    )


def resume(
    store: Store, cfg: SisaConfig, *, log: Callable[[str], None] | None = None, filings_only: bool = False
) -> list[DeletionRequest]:
    """Finish every open request from where it stopped (the text may already be gone), each a
    batch of one; with `filings_only`, only the filings to the queue a crash cut short (the
    service's worker: a batch refuses to run while they are open). The caller holds the store lock."""
    log = log or (lambda msg: None)
    out = []
    for req in requests_ledger.open_requests(store):
        if req.batch_owned or req.status == S.AWAITING_APPROVAL or (filings_only and not req.queued):
            continue  # queued: `sisa process` carries it out (a crash before queuing finishes it here)
        out += _resume_one(store, cfg, req, log)
    return out


def _resume_one(
    store: Store, cfg: SisaConfig, req: DeletionRequest, log: Callable[[str], None]
) -> list[DeletionRequest]:
    log(f"resuming {req.request_id} from status {req.status.value}")
    rows = (
        selection.find_live_by_hashes(store, set(req.target_hashes))
        if req.status == S.RECEIVED
        else store.index.table.slice(0, 0)
    )
    item = InFlight(req, rows)
    if rows.num_rows:
        item.texts, item.prompts = read_texts(store, rows)
    return carry_out(store, cfg, new_run(store, log=log), [item])


# -- batches of queued requests (`sisa process`, `sisa train`, the service's worker) -----------
@dataclass
class BatchResult:
    batch_id: str | None
    requests: list[DeletionRequest] = field(default_factory=list)
    model_version: int | None = None
    retrained: list[ShardResult] = field(default_factory=list)
    wall_s: float = 0.0


def queued_requests(store: Store) -> list[DeletionRequest]:
    """Requests a batch owes work: queued, or in a batch a crash interrupted."""
    return [r for r in requests_ledger.open_requests(store) if r.batch_owned]


def due(cfg: SisaConfig, reqs: list[DeletionRequest], now: datetime | None = None) -> str | None:
    """Why a batch should run now (None: not yet). The policy in `deletion.*`."""
    if not reqs:
        return None
    now = now or datetime.now(UTC)
    dc = cfg.deletion
    if any(r.status != S.QUEUED for r in reqs):
        return "a batch was interrupted"
    oldest = min(datetime.fromisoformat(r.received_at) for r in reqs)
    if now - oldest >= timedelta(hours=dc.batch_after_h):
        waited = (now - oldest).total_seconds() / 3600
        return f"the oldest request waited {waited:.1f} h (deletion.batch_after_h={dc.batch_after_h:g})"
    if len(reqs) >= dc.batch_max:
        return f"{len(reqs)} requests wait (deletion.batch_max={dc.batch_max})"
    earliest = min(datetime.fromisoformat(r.deadline) for r in reqs)
    if now >= earliest - timedelta(days=dc.deadline_margin_days):
        return f"a deadline is within {dc.deadline_margin_days:g} days (deletion.deadline_margin_days)"
    return None


def process(
    store: Store,
    cfg: SisaConfig,
    *,
    train_new: bool = False,
    evidence: bool = True,
    log: Callable[[str], None] | None = None,
    unlocked: Callable[[], AbstractContextManager] | None = None,
    only: set[str] | None = None,
) -> BatchResult:
    """Carry out every queued request in one batch (and a batch a crash cut short); with `only`,
    just those requests (`sisa approve`: the one it approved), unless a batch was cut short. The
    caller holds the jobs lock and the writer lock; `unlocked()` (e.g. `StoreLock.released`) lets
    go of the writer lock while the shard jobs train, so requests filed meanwhile are queued with
    their relief at once. The batch's version then keeps their shards relieved too."""
    log = log or (lambda msg: None)
    started = time.perf_counter()
    reqs = queued_requests(store)
    if only is not None and all(r.status == S.QUEUED for r in reqs):
        reqs = [r for r in reqs if r.request_id in only]
    if not reqs:
        return BatchResult(None)
    # A request cut short before it was queued, or carried out alone, may serve an approximate
    # checkpoint now, and commits from the version it started from when it resumes: it goes first.
    requests_ledger.refuse_unfinished(store, "a batch", with_batch=True)
    batch_id = (
        next((r.batch_id for r in reqs if r.batch_id), None)
        or f"batch-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    )
    log(f"{batch_id}: {len(reqs)} request(s)")
    items = []
    for r in reqs:
        r.batch_id = batch_id
        rows = (
            selection.find_live_by_hashes(store, set(r.target_hashes))
            if r.status == S.QUEUED
            else store.index.table.slice(0, 0)
        )
        item = InFlight(r, rows)
        if evidence and rows.num_rows:  # the old text, read into memory before it goes, for the evidence
            item.texts, item.prompts = read_texts(store, rows)
        items.append(item)
    run = new_run(store, batch_id=batch_id, train_new=train_new, unlocked=unlocked, log=log)
    carry_out(store, cfg, run, items)
    return BatchResult(
        batch_id, reqs, run.version.model_version if run.version else None, run.results, time.perf_counter() - started
    )


def train_store(
    store: Store, cfg: SisaConfig, from_scratch: bool = False, reason: str = "train"
) -> training.TrainResult:
    """`sisa train`: requests in flight refuse it; a queued batch is carried out first, with the
    new slices trained in the same shard jobs; then every pending slice trains."""
    started = time.perf_counter()
    requests_ledger.refuse_unfinished(store, "training", with_batch=True)
    if not from_scratch:
        chain.refuse_other_config(store, cfg)  # before a queued batch trains new slices under it
    if queued_requests(store):
        if not from_scratch:
            # The batch trains the new slices in its shard jobs: their records are checked against
            # `training.truncation` first, as `training.train` checks them, before any request moves.
            training.training_lengths(store, cfg, training.plan_tasks(store, cfg)[0])
        batch = process(store, cfg, train_new=not from_scratch)
        if not from_scratch:
            wall = time.perf_counter() - started
            return training.TrainResult(
                batch.model_version, batch.retrained, {}, wall, noop=not batch.retrained, batch_id=batch.batch_id
            )
    return training.train(store, cfg, from_scratch, reason)


# -- approval (four eyes): a request whose rule asks for approvers ---------------------------------
class SelfApprovalError(RefusedError):
    """The requester tried to approve (or reject) their own request (the service answers 403)."""


def decidable(store: Store, request_id: str, by: str) -> DeletionRequest:
    """The request `by` may approve or reject now: awaiting approval, filed by someone else, not
    approved by `by` already. NotFoundError, ValidationError, RefusedError otherwise."""
    by = check_name(by, "the approver's name")
    req = requests_ledger.read_request(store, request_id)
    if req.status != S.AWAITING_APPROVAL:
        raise RefusedError(f"request {request_id} is {req.status.value}, not awaiting approval; nothing was changed")
    if req.requested_by is not None and by == req.requested_by:
        raise SelfApprovalError(
            f"{by!r} filed request {request_id}: its approver must be someone else (four eyes); nothing was changed"
        )
    if any(a["by"] == by for a in req.approvals):
        raise RefusedError(
            f"{by!r} approved request {request_id} already; it needs {req.approvers_needed} distinct approver(s)"
        )
    return req


def approve(
    store: Store,
    cfg: SisaConfig,
    request_id: str,
    by: str,
    *,
    at_once: bool = False,
    evidence: bool = True,
    log: Callable[[str], None] | None = None,
) -> DeletionRequest:
    """`by` approves. Once enough distinct approvers have, the request goes on where it waited
    (its relief serves, unless the rule served it already) and is queued: an approved request is
    carried out by a batch, from the version serving then (the one it saw may be long gone).
    With `at_once` (a request filed to be carried out at once: `sisa approve`) that batch runs
    now, of this request alone. The caller holds the writer lock (`at_once`: the jobs lock too)."""
    log = log or (lambda msg: None)
    req = decidable(store, request_id, by)
    if len(req.approvals) + 1 >= req.approvers_needed:  # this approval carries it out: nothing may be in flight
        requests_ledger.refuse_unfinished(store, f"carrying out request {request_id}", with_batch=True)
    req.approvals.append({"by": check_name(by, "the approver's name"), "at": now_iso()})
    if req.needs_approval:
        requests_ledger.write_request(store, req)
        log(f"request {request_id}: approved by {by}; waits for {req.approvers_needed - len(req.approvals)} more")
        return req
    req.move_to(S.RECEIVED)
    req.queued = True
    if req.versions.bridge is None:
        # Carried out from what serves now: the version it saw when filed may be long gone.
        req.version_before, req.checkpoints_before = _serving(store)
    log(f"request {request_id}: approved by {', '.join(a['by'] for a in req.approvals)}")
    rows = selection.find_live_by_hashes(store, set(req.target_hashes))
    carry_out(store, cfg, new_run(store, log=log), [InFlight(req, rows)])
    if at_once:
        process(store, cfg, evidence=evidence, log=log, only={request_id})
    return requests_ledger.read_request(store, request_id)


def reject(store: Store, cfg: SisaConfig, request_id: str, by: str, reason: str) -> DeletionRequest:
    """`by` rejects, with a reason: final. Nothing in the store changes: a relief the rule let
    serve while it waited is rolled back (if it still serves), a rectification's staged text is
    deleted. The caller holds the writer lock."""
    reason = (reason or "").strip()
    if not reason or len(reason) > IDENTITY_VERIFICATION_MAX:
        raise ValidationError(
            f"a rejection needs a reason of 1-{IDENTITY_VERIFICATION_MAX} characters, got {len(reason)}"
        )
    req = decidable(store, request_id, by)
    req.rejection = {"by": check_name(by, "the approver's name"), "at": now_iso(), "reason": reason}
    req.move_to(S.REJECTED)
    requests_ledger.write_request(store, req)
    relief = req.versions.get(VersionKind.RELIEF)
    served = relief is not None and req.version_before is not None and relief != req.version_before
    if served and store.current_version() == relief:
        try:
            rollback.roll_back(store, cfg, req.version_before)
        except RefusedError as e:  # e.g. a later deletion purged it: the relief (exact) serves on
            req.rejection["relief"] = f"kept serving: {e.message}"
            requests_ledger.write_request(store, req)
    if req.kind == RequestKind.RECTIFY:
        corrections.unstage(store, request_id)
    return req
