"""The forgetting state machine: each phase takes a request in one status and leaves it in the next.

    open_request   (select, plan, ledger)      → received      the request is durable before anything is destroyed
    measure_before (evidence)                  received        loss of the records under the serving version
    serve_bridge   (relief, --fast, --isolate) received        a version that serves until the exact one lands
    enqueue        (--queue)                   → queued        records marked `forgetting` (`rectifying`); a batch does the rest
    delete_data                                → data_deleted  records gone from slice files, index, ingest counts
    retrain                                    → retraining    affected shards from their last clean checkpoint
    commit_exact                               retraining      one version, the MLflow alias follows
    purge_tainted                              retraining      checkpoints, versions, MLflow runs, caches
    certify                                    → completed     lineage and purge checks, the certificate

A rectification (`rectify`, kind `rectify` on the same ledger) goes through the same phases,
queued or not: its delete_data (`remove_data`, which a batch calls too) rewrites the records' text
in place with the staged new text (sisa/forgetting/corrections.py) instead of erasing them, and what it
forgets, purges and certifies is the records' old content.

Every phase reads what it needs from the request's ledger entry and skips what an earlier run
already recorded, so `carry_out` resumes a request from wherever a crash stopped it. The CLI
drives one request through all phases; `sisa/forgetting/batches.py` drives queued requests through the
same delete, retrain, purge and certify steps together, one retrain per shard. Text is held only in `Work` (memory), never in the request.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from sisa.config import SisaConfig
from sisa.evidence import measures as evidence
from sisa.evidence.probes import Probe
from sisa.forgetting import corrections, deletion, unlearning
from sisa.forgetting.certificate import make_certificate
from sisa.lineage import checkpoints, requests_ledger, versions
from sisa.lineage.requests_ledger import (
    DeletionPlan,
    DeletionRequest,
    RequestKind,
    RequestMode,
    RequestStatus,
)
from sisa.lineage.versions import ModelVersion
from sisa.serving import engine as serving
from sisa.serving import mirror as registry
from sisa.training import scheduler
from sisa.training.shard_job import ShardResult, ShardTask, train_shard
from storage.errors import RefusedError, ValidationError
from storage.faults import maybe_die
from storage.schemas import FORGETTING, LIVE, RECTIFYING
from storage.store import Store, now_iso

Texts = tuple[list[str], list[str | None] | None]


@dataclass
class Work:
    """What one run of the state machine holds in memory only: the selected rows, their text
    (for evidence and the fast path), a holdout, and how to report progress."""

    rows: pa.Table
    texts: list[str] = field(default_factory=list)
    prompts: list[str | None] | None = None
    holdout: Texts | None = None
    targets: evidence.Targets | None = None  # questions for the trio, leak@k and MIA (--probes, --holdout)
    locality_before: list[list[int]] | None = None  # the version before's locality predictions
    on_version: Callable[[str, ModelVersion], None] = lambda kind, entry: None
    log: Callable[[str], None] = lambda msg: None
    started: float = field(default_factory=time.perf_counter)
    retrain_started: float | None = None


# -- select and record -------------------------------------------------------------------------
def new_request(store: Store, cfg: SisaConfig, sel: deletion.Selection, plan: DeletionPlan, mode: RequestMode) -> DeletionRequest:
    received = datetime.now(UTC)
    ids = sel.rows["record_id"].to_pylist()
    serving_version = versions.current(store)
    req = DeletionRequest(
        request_id=f"req-{received:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
        selector={"kind": sel.kind, "value_hashes": requests_ledger.selector_hashes(store, sel.kind, sel.values), "value_hash": store.hash_id("\n".join(sorted(sel.values)))},
        id_hashes=sorted(store.hash_ids(ids)),
        # So that a later --subject for a person whose records all went by id is a no-op too.
        subject_hashes=requests_ledger.selector_hashes(store, "subject", sorted({s for s in sel.rows["subject_id"].to_pylist() if s})),
        records=len(ids),
        missing_skipped=len(sel.missing),
        received_at=received.isoformat(timespec="milliseconds"),
        deadline=(received + timedelta(days=cfg.unlearning.deadline_days)).isoformat(timespec="milliseconds"),
        mode=mode,
        plan=plan,
        version_before=serving_version.model_version if serving_version else None,
        # Recorded now: after the purge, the tainted ones among them no longer exist to be read.
        checkpoints_before=[
            {"shard_id": s, "checkpoint_id": c, "adapter_sha256": checkpoints.adapter_sha256(store, c)}
            for s, c in sorted(versions.shard_checkpoints(serving_version).items())
        ],
    )
    req.history.append({"status": req.status.value, "at": now_iso()})
    return req


def open_request(store: Store, cfg: SisaConfig, sel: deletion.Selection, plan: DeletionPlan, mode: RequestMode, queue: bool = False, idempotency_key_hash: str | None = None) -> DeletionRequest:
    """Phase 1: the ledger entry comes first; nothing is destroyed before it is durable."""
    if mode == RequestMode.ISOLATE:
        serving_version = versions.current(store)
        if serving_version is not None and not set(serving_version.shards) - set(plan.shard_ids):
            raise RefusedError("--isolate needs at least one unaffected shard to serve; every shard holds some of these records")
    req = new_request(store, cfg, sel, plan, mode)
    req.queued = queue
    req.idempotency_key_hash = idempotency_key_hash
    requests_ledger.write_request(store, req)
    maybe_die("forget-after-ledger")
    return req


def _before_shards(store: Store, req: DeletionRequest) -> dict[int, str]:
    return versions.shard_checkpoints(versions.read(store, req.version_before)) if req.version_before else {}


def _affected(req: DeletionRequest) -> list[int]:
    return req.plan.shard_ids if req.plan else []


# -- evidence ----------------------------------------------------------------------------------
def measure_targets(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work, label: str, shards: dict[int, str]) -> None:
    """The trio, leak@k and membership inference of one version (sisa/evidence/measures.py), as numbers
    under `evidence.versions.<label>`; relief, fast and exact get their privacy leak relative to
    the exact version once it is measured."""
    if not work.targets:
        return
    by_version = req.evidence.setdefault("versions", {})
    if label != "before" and "before" not in by_version and req.version_before is not None:
        # Measured once the first new version serves, not before it: the relief must not wait
        # for the evidence. The version before stays on disk until the purge.
        measure_targets(store, cfg, req, work, "before", _before_shards(store, req))
    ens = serving.load_ensemble(store, cfg, shards)
    numbers, preds = evidence.measure(ens, work.targets, cfg.training.max_length, work.locality_before)
    if label == "before":
        work.locality_before = preds
    numbers["model_version"] = req.version_before if label == "before" else req.versions.get(label)
    by_version[label] = numbers
    if "exact" in by_version:
        evidence.add_privleak(by_version)
    requests_ledger.write_request(store, req)


def measure_before(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    """Evidence under the serving model, while the text is in memory, and a stranger baseline:
    the shards that never held the records."""
    before = _before_shards(store, req)
    ev = req.evidence
    if not work.texts or not before or req.status != RequestStatus.RECEIVED or "loss_before" in ev:
        return
    m = serving.measure_records(store, cfg, before, work.texts, work.prompts)
    ev["loss_before"] = m.get("ensemble")
    unaffected = [s for s in before if s not in _affected(req)]
    if unaffected:
        ev["loss_unseen_shards"] = serving.mean([m["per_shard"][str(s)] for s in unaffected])
    ev["answer_tokens_only"] = work.prompts is not None
    if work.holdout:
        ev["holdout_records"] = len(work.holdout[0])
        ev["holdout_before"] = serving.measure_records(store, cfg, before, *work.holdout).get("ensemble")
    requests_ledger.write_request(store, req)


# -- relief ------------------------------------------------------------------------------------
def relieved_shards(store: Store, shards: dict[int, str], earliest: dict[int, int]) -> dict[int, str]:
    """Each shard in `earliest` (shard → earliest slice holding a record to forget) at its last
    checkpoint before that slice, dropped when that is slice 0; the others as they are. A shard
    whose checkpoint never reached that slice keeps it (it never saw the records)."""
    out = {}
    for shard, cid in shards.items():
        if shard in earliest and checkpoints.slice_of(cid) >= earliest[shard]:
            clean = checkpoints.ancestor_before(store, cid, earliest[shard])
            if clean is not None:
                out[shard] = clean
        else:
            out[shard] = cid
    return out


def serve_bridge(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    """What serves until the exact version lands. Relief (the default): the current version with
    every affected shard at its last clean checkpoint, exact and instant; --fast: an approximate
    (NPO) version of the affected shards; --isolate: the unaffected shards alone."""
    if req.status != RequestStatus.RECEIVED or req.mode == RequestMode.EXACT:
        return
    if {"relief", "approximate", "isolate"} & set(req.versions):
        return
    if req.mode == RequestMode.RELIEF:
        serve_relief(store, cfg, req, work)
        return
    before = _before_shards(store, req)
    if not before:
        return
    t0 = time.perf_counter()
    affected = _affected(req)
    if req.mode == RequestMode.FAST:
        shards = unlearning.unlearn_shards(store, cfg, req.request_id, work.rows, before)
        entry = versions.commit_version(store, shards, "forget-fast", cfg.training_fingerprint(), cfg.model.name, aggregation=cfg.serving.aggregation, approximate=True, request_id=req.request_id)
        req.versions["approximate"] = entry.model_version
        label = "approximate"
    else:
        shards = {s: c for s, c in before.items() if s not in affected}
        entry = versions.commit_version(store, shards, "forget-isolate", cfg.training_fingerprint(), cfg.model.name, aggregation=cfg.serving.aggregation, excluded_shards=affected, request_id=req.request_id)
        req.versions["isolate"] = entry.model_version
        label = "isolating"
    req.timings["fast_path_s"] = time.perf_counter() - t0
    requests_ledger.write_request(store, req)
    registry.track_version(store, cfg, entry, [], req.timings["fast_path_s"])
    work.log(f"{label} version {entry.model_version} serves after {time.perf_counter() - work.started:.1f}s")
    work.on_version(label, entry)
    if work.texts and req.mode == RequestMode.FAST:
        req.evidence["loss_fast_path"] = serving.measure_records(store, cfg, shards, work.texts, work.prompts).get("ensemble")
        if work.holdout:
            req.evidence["holdout_fast_path"] = serving.measure_records(store, cfg, shards, *work.holdout).get("ensemble")
        requests_ledger.write_request(store, req)
    measure_targets(store, cfg, req, work, "approximate" if req.mode == RequestMode.FAST else "isolate", shards)


def serve_relief(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    t0 = time.perf_counter()
    current = versions.current(store)
    if current is None or req.plan is None:
        return
    earliest = {sp.shard_id: sp.earliest_slice for sp in req.plan.shards}
    shards = relieved_shards(store, current.shards, earliest)
    if shards == current.shards:  # no serving checkpoint has seen the records yet
        req.versions["relief"] = current.model_version
        requests_ledger.write_request(store, req)
        return
    # With no clean shard left the relief serves the base model alone: exact, if plain.
    entry = versions.commit_version(
        store, shards, "forget-relief", cfg.training_fingerprint(), cfg.model.name, aggregation=cfg.serving.aggregation,
        # Shards an earlier relief already left out stay out (and say so)
        request_id=req.request_id, excluded_shards=sorted((set(current.shards) | set(current.excluded_shards)) - set(shards)), allow_empty=True,
    )
    req.versions["relief"] = entry.model_version
    req.timings["relief_s"] = time.perf_counter() - t0
    requests_ledger.write_request(store, req)
    registry.track_version(store, cfg, entry, [], req.timings["relief_s"])
    work.log(f"relief version {entry.model_version} serves after {time.perf_counter() - work.started:.2f}s (exact: affected shard(s) at their last clean checkpoint)")
    work.on_version("relief", entry)
    if work.texts:
        req.evidence["loss_relief"] = serving.measure_records(store, cfg, shards, work.texts, work.prompts).get("ensemble")
        if work.holdout:
            req.evidence["holdout_relief"] = serving.measure_records(store, cfg, shards, *work.holdout).get("ensemble")
        requests_ledger.write_request(store, req)
    measure_targets(store, cfg, req, work, "relief", shards)


def enqueue(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    """received → queued: the records are marked `forgetting` (a rectification's `rectifying`):
    no training reads them from now on, and a batch (`sisa process`) deletes them (replaces
    their text with the staged one) and retrains later."""
    if req.status != RequestStatus.RECEIVED or not req.queued:
        return
    rows = work.rows if work.rows.num_rows else deletion.find_live_by_hashes(store, set(req.target_hashes))
    store.mark_records(rows["record_id"].combine_chunks(), RECTIFYING if req.kind == RequestKind.RECTIFY else FORGETTING)
    req.move_to(RequestStatus.QUEUED)
    requests_ledger.write_request(store, req)
    work.log(f"request {req.request_id} queued; run `sisa process` (or wait for the batching policy) for the exact version")


# -- delete ------------------------------------------------------------------------------------
def delete_data(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    """received → data_deleted: the records leave the slice files and the index (a
    rectification: their text is replaced in place by the staged new text)."""
    if req.status != RequestStatus.RECEIVED:
        return
    t0 = time.perf_counter()
    live = work.rows if work.rows.num_rows else deletion.find_live_by_hashes(store, set(req.target_hashes))
    req.removed = remove_data(store, req, live)
    req.timings["delete_data_s"] = time.perf_counter() - t0
    req.move_to(RequestStatus.DATA_DELETED)
    requests_ledger.write_request(store, req)
    if req.kind == RequestKind.RECTIFY:
        work.log(f"replaced the text of {req.removed} record(s) in the slice files and the index")
    else:
        work.log(f"deleted {req.removed} record(s) from the slice files and the index")
    maybe_die("forget-after-delete")


def remove_data(store: Store, req: DeletionRequest, rows: pa.Table) -> int:
    """The old content leaves the data (here and in a batch): a deletion erases the records; a
    rectification rewrites their text and content hash with the staged new text, drops the
    staged copy and gives the records back to training (`live`). Idempotent: a resumed call
    finds nothing left to change. Returns how many records changed."""
    if req.kind != RequestKind.RECTIFY:
        return deletion.erase_records(store, rows)
    changed = corrections.apply(store, req.request_id, rows)
    corrections.unstage(store, req.request_id)
    if rows.num_rows:
        store.mark_records(rows["record_id"].combine_chunks(), LIVE)
    return changed


# -- retrain and commit ------------------------------------------------------------------------
def retrain_tasks(store: Store, cfg: SisaConfig, base: dict[int, str], plan: DeletionPlan) -> list[ShardTask]:
    """One task per affected shard that trained on the records: from the checkpoint before its
    earliest affected slice through its last slice. A shard whose serving checkpoint never
    reached the records needs nothing: deleting the data was enough."""
    tasks = []
    for sp in plan.shards:
        serving_ckpt = base.get(sp.shard_id)
        if serving_ckpt is None or sp.earliest_slice > checkpoints.slice_of(serving_ckpt):
            continue
        parent = checkpoints.ancestor_before(store, serving_ckpt, sp.earliest_slice)
        last = max(checkpoints.shard_slices(store, sp.shard_id))
        tasks.append(ShardTask(store.uri, cfg.to_dict(), sp.shard_id, tuple(range(sp.earliest_slice, last + 1)), parent, purpose="forget"))
    return tasks


def retrain(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> list[ShardResult]:
    """data_deleted → retraining: retrain the affected shards (in parallel, Ray or serial)."""
    if req.status not in (RequestStatus.DATA_DELETED, RequestStatus.RETRAINING) or "exact" in req.versions:
        return []
    if req.status == RequestStatus.DATA_DELETED:
        req.move_to(RequestStatus.RETRAINING)
        requests_ledger.write_request(store, req)
    work.retrain_started = time.perf_counter()
    tasks = retrain_tasks(store, cfg, _before_shards(store, req), req.plan) if req.plan else []
    return scheduler.run_shard_jobs(train_shard, tasks, cfg.scheduler, desc="retrain shards") if tasks else []


def commit_exact(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work, results: list[ShardResult]) -> None:
    """The exact version: the serving shards with the retrained ones swapped in; MLflow follows."""
    if req.status != RequestStatus.RETRAINING or "exact" in req.versions:
        return
    base = _before_shards(store, req)
    if not base:  # nothing was trained when the request came: deleting the data was enough
        req.versions["exact"] = None
        requests_ledger.write_request(store, req)
        return
    shards = dict(base)
    shards.update({r.shard_id: r.last_checkpoint_id for r in results})
    entry = versions.commit_version(store, shards, "forget", cfg.training_fingerprint(), cfg.model.name, aggregation=cfg.serving.aggregation, request_id=req.request_id)
    req.versions["exact"] = entry.model_version
    req.timings["retrain_s"] = time.perf_counter() - (work.retrain_started or work.started)
    req.retrained = [
        {"shard_id": r.shard_id, "slices": [s.slice_idx for s in r.slices], "steps": sum(s.steps for s in r.slices), "tokens": r.tokens, "wall_s": r.wall_s}
        for r in results
    ]
    requests_ledger.write_request(store, req)
    registry.track_version(store, cfg, entry, results, req.timings["retrain_s"])
    work.log(f"exact version {entry.model_version} serves (retrained shard(s) {[r.shard_id for r in results]} in {req.timings['retrain_s']:.1f}s)")
    work.on_version("exact", entry)
    if work.texts:
        now_serving = versions.shard_checkpoints(versions.current(store))
        req.evidence["loss_after"] = serving.measure_records(store, cfg, now_serving, work.texts, work.prompts).get("ensemble")
        if work.holdout:
            req.evidence["holdout_after"] = serving.measure_records(store, cfg, now_serving, *work.holdout).get("ensemble")
        requests_ledger.write_request(store, req)
        measure_targets(store, cfg, req, work, "exact", now_serving)


# -- purge and certify -------------------------------------------------------------------------
def purge_tainted(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    """Every checkpoint whose lineage holds a deleted record goes, with the versions and MLflow
    runs that held one. MLflow is first brought in line with the ledger: a version committed
    before a crash or an MLflow outage is logged now, and the alias follows the serving version,
    so the purge never leaves the alias on a deleted registered version."""
    if req.status != RequestStatus.RETRAINING:
        return
    registry.ensure_tracked(store, cfg)
    t0 = time.perf_counter()
    hashes, legacy = purge_targets(store, [req])
    req.purge = deletion.purge(store, cfg, hashes, req.request_id, legacy)
    req.timings["purge_s"] = time.perf_counter() - t0


def purge_targets(store: Store, reqs: list[DeletionRequest]) -> tuple[set[str], set[str]]:
    """What the purge of these requests looks for: the lineage hashes they forget, and the
    checkpoints older than content lineage that trained a rectified record (which text they saw
    is unknown, so they go as if they held the old one: fail closed)."""
    hashes = set().union(*(set(r.id_hashes) for r in reqs))
    rectified = set().union(*(set(r.record_hashes) for r in reqs if r.kind == RequestKind.RECTIFY))
    return hashes, checkpoints.legacy_holding(store, rectified) if rectified else set()


def certify(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> None:
    """retraining → completed, with the certificate of what can be checked now."""
    if req.status != RequestStatus.RETRAINING or req.purge is None:
        return
    req.timings["total_s"] = time.perf_counter() - work.started
    req.certificate = make_certificate(store, req)
    req.completed_at = now_iso()
    req.move_to(RequestStatus.COMPLETED)
    requests_ledger.write_request(store, req)
    work.log(f"purged {len(req.purge['checkpoints'])} checkpoint(s) and {len(req.purge['versions'])} version(s); request {req.request_id} completed")


def carry_out(store: Store, cfg: SisaConfig, req: DeletionRequest, work: Work) -> DeletionRequest:
    """Run every phase the request has not finished. On an error the request stays open and
    resumable (the error's type and message, never record text, go into the entry); the serving
    version is whatever was committed last."""
    try:
        measure_before(store, cfg, req, work)
        serve_bridge(store, cfg, req, work)
        enqueue(store, cfg, req, work)
        if req.queued:
            return req  # a batch carries out the rest
        delete_data(store, cfg, req, work)
        results = retrain(store, cfg, req, work)
        commit_exact(store, cfg, req, work, results)
        purge_tainted(store, cfg, req, work)
        certify(store, cfg, req, work)
    except Exception as e:
        req.errors.append({"at": now_iso(), "error": f"{type(e).__name__}: {getattr(e, 'message', '')[:300]}"})
        requests_ledger.write_request(store, req)
        raise
    return req


# -- one request, start to end (the CLI and the demo) ------------------------------------------
@dataclass
class ForgetResult:
    noop: bool = False
    dry_run: bool = False
    plan: DeletionPlan | None = None
    request: DeletionRequest | None = None
    already_deleted: int = 0
    missing: int = 0
    replayed: bool = False  # an idempotency key named an earlier request: this is that one

    def to_dict(self) -> dict[str, Any]:
        if self.request is not None:
            return {"request_id": self.request.request_id, "request": self.request.to_dict()}
        out: dict[str, Any] = {"plan": self.plan.to_dict() if self.plan else None}
        if self.noop:
            out |= {"noop": True, "already_deleted": self.already_deleted, "missing": self.missing}
        if self.dry_run:
            out["dry_run"] = True
        return out


def forget(
    store: Store,
    cfg: SisaConfig,
    kind: str,
    values: list[str],
    mode: RequestMode = RequestMode.EXACT,
    dry_run: bool = False,
    queue: bool = False,
    allow_missing: bool = False,
    evidence: bool = True,
    holdout: Texts | None = None,
    on_version: Callable[[str, ModelVersion], None] | None = None,
    log: Callable[[str], None] | None = None,
    idempotency_key: str | None = None,
    probes: list[Probe] | None = None,
) -> ForgetResult:
    """Select, validate and plan; then (unless a dry run) record the request and carry it out, or
    with `queue` leave it queued for a batch. The caller holds the store lock. A request filed
    again with the same `idempotency_key` returns the first one, whatever became of it."""
    key_hash, earlier = _replay(store, idempotency_key)
    if earlier is not None:
        return ForgetResult(request=earlier, replayed=True)
    if not dry_run:
        refuse_unfinished(store, queue)
    sel = deletion.select_records(store, kind, values)
    if sel.missing and not allow_missing:
        raise ValidationError(f"{deletion.describe_missing(sel)}; nothing was changed (pass --allow-missing to skip them)")
    if sel.rectifying:
        raise RefusedError(f"{deletion.describe_rectifying(sel)} (it keeps the records, with new text), then forget them; nothing was changed")
    plan = deletion.plan_selection(store, cfg, sel)
    if sel.rows.num_rows == 0:
        return ForgetResult(noop=True, plan=plan, already_deleted=len(sel.already_deleted), missing=len(sel.missing))
    if dry_run:
        return ForgetResult(dry_run=True, plan=plan)
    req = open_request(store, cfg, sel, plan, mode, queue, key_hash)
    log = log or (lambda msg: None)
    log(f"request {req.request_id}: {req.records} record(s) in shard(s) {plan.shard_ids} (retrain cost {plan.cost_fraction:.1%} of a full retrain)")
    work = Work(sel.rows, on_version=on_version or (lambda kind, entry: None), log=log)
    # A queued request returns at once: its evidence is measured by the batch, while the text is
    # still in the store and the versions before and relief still exist.
    if evidence and not queue:
        work.texts, work.prompts = deletion.read_texts(store, sel.rows)
        work.holdout = holdout
        work.targets = _targets(cfg, sel.rows, work, probes)
    return ForgetResult(request=carry_out(store, cfg, req, work))


def _replay(store: Store, idempotency_key: str | None) -> tuple[str | None, DeletionRequest | None]:
    """The keyed hash of a client's idempotency key, and the request filed with it before (if any)."""
    if not idempotency_key:
        return None, None
    key_hash = store.hash_id(f"idempotency\x00{idempotency_key}")
    return key_hash, next((r for r in requests_ledger.all_requests(store) if r.idempotency_key_hash == key_hash), None)


def refuse_unfinished(store: Store, queue: bool) -> None:
    """A request carried out at once waits for no other; one filed for a batch (`queue`) may also
    join while a batch runs (or was cut short): the batch's version keeps it relieved, or the
    resumed batch takes it. Requests cut short otherwise go first."""
    in_flight = [r.request_id for r in requests_ledger.open_requests(store) if r.status != RequestStatus.QUEUED and not (queue and r.batch_owned)]
    if in_flight:
        raise RefusedError(f"request(s) {', '.join(in_flight)} are not finished; run `sisa forget --resume` (or `sisa process` for queued ones) first")


def _targets(cfg: SisaConfig, rows: pa.Table, work: Work, probes: list[Probe] | None, new: list[tuple[str, str | None]] | None = None) -> evidence.Targets:
    """The trio and leak@k (k: `evidence.leak_k`) with --probes; membership inference with a holdout."""
    subjects = {s for s in rows["subject_id"].to_pylist() if s}
    holdout = work.holdout[0] if work.holdout else None
    return evidence.build_targets(work.texts, work.prompts, probes or [], subjects, holdout, new, with_trio=probes is not None, leak_k=cfg.evidence.leak_k)


def rectify(
    store: Store,
    cfg: SisaConfig,
    fix_table: pa.Table,
    problems: list[str] | None = None,
    mode: RequestMode = RequestMode.EXACT,
    dry_run: bool = False,
    evidence: bool = True,
    holdout: Texts | None = None,
    on_version: Callable[[str, ModelVersion], None] | None = None,
    log: Callable[[str], None] | None = None,
    probes: list[Probe] | None = None,
    queue: bool = False,
    idempotency_key: str | None = None,
) -> ForgetResult:
    """Correct records' text exactly: validate every correction first (one error naming every
    bad id, nothing changed), plan as for a deletion of the records, stage the new text, record
    the request (kind `rectify`) and carry it out, or with `queue` leave it queued for a batch
    (relief serving; the records `rectifying`). The caller holds the store lock. A request filed
    again with the same `idempotency_key` returns the first one."""
    key_hash, earlier = _replay(store, idempotency_key)
    if earlier is not None:
        return ForgetResult(request=earlier, replayed=True)
    if not dry_run:
        refuse_unfinished(store, queue)
    fix = corrections.validate(store, fix_table, problems)
    sel = deletion.Selection("ids", fix.ids, fix.rows)
    plan = deletion.plan_selection(store, cfg, sel, removes=False)
    if dry_run:
        return ForgetResult(dry_run=True, plan=plan)
    req = new_request(store, cfg, sel, plan, mode)
    req.queued = queue
    req.idempotency_key_hash = key_hash
    req.kind = RequestKind.RECTIFY
    req.record_hashes = req.id_hashes
    req.rectified = fix.content_hashes(store)
    req.id_hashes = sorted(c["old"] for c in req.rectified)  # what is forgotten: the old content
    req.subject_hashes = []  # the subjects stay: nothing about them is forgotten
    if mode == RequestMode.ISOLATE and versions.current(store) is not None and not set(versions.current(store).shards) - set(plan.shard_ids):
        raise RefusedError("--isolate needs at least one unaffected shard to serve; every shard holds some of these records")
    corrections.stage(store, req.request_id, fix)  # before the ledger: a resumed request finds it
    requests_ledger.write_request(store, req)
    maybe_die("forget-after-ledger")
    log = log or (lambda msg: None)
    log(f"request {req.request_id} (rectify): {req.records} record(s) in shard(s) {plan.shard_ids} (retrain cost {plan.cost_fraction:.1%} of a full retrain)")
    work = Work(sel.rows, on_version=on_version or (lambda kind, entry: None), log=log)
    # Queued: the batch measures the old text's loss (sisa/forgetting/batches.py measure_queued).
    if evidence and not queue:
        work.texts, work.prompts, new = corrections.old_and_new(store, fix)  # in memory only
        work.holdout = holdout
        work.targets = _targets(cfg, sel.rows, work, probes, new)
    return ForgetResult(request=carry_out(store, cfg, req, work))


def resume(store: Store, cfg: SisaConfig, log: Callable[[str], None] | None = None) -> list[DeletionRequest]:
    """Finish every open request from where it stopped (the text may already be gone).
    The caller holds the store lock."""
    log = log or (lambda msg: None)
    out = []
    for req in requests_ledger.open_requests(store):
        if req.queued and req.status != RequestStatus.RECEIVED:
            continue  # queued: `sisa process` carries it out (a crash before queuing finishes it here)
        log(f"resuming {req.request_id} from status {req.status.value}")
        rows = deletion.find_live_by_hashes(store, set(req.target_hashes)) if req.status == RequestStatus.RECEIVED else store.index.table.slice(0, 0)
        work = Work(rows, log=log)
        if rows.num_rows:
            work.texts, work.prompts = deletion.read_texts(store, rows)
        out.append(carry_out(store, cfg, req, work))
    return out
