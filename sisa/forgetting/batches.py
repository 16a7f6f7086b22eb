"""Batches: every queued request, deletions and rectifications, carried out together, one retrain per shard.

    queued requests ──► delete all their records (a rectification: replace their text with the
    staged new text) ──► plan together (per shard: the earliest slice any of them hit) ──► retrain
    each affected shard once ──► commit one version ──► purge once ──► certify each request on its own

A request is queued by `sisa forget --queue` or `sisa rectify --queue` (or the service's POST
/v1/deletion-requests and /v1/rectifications): recorded, its records marked `forgetting` (a
rectification's `rectifying`, its new text staged in the store), the relief version serving.
`sisa process` runs a batch now; `sisa process --due` only when the policy says so
(`deletion.batch_after_h`, `deletion.batch_max`, `deletion.deadline_margin_days`); `sisa train`
runs one first, training the new slices in the same shard jobs.

Crash safety: each request's status moves forward in the ledger as its records go; the batch
version carries the batch id, so a resumed batch never commits twice; until the batch version
commits, the relief versions serve. The caller holds the store lock: two batches never run at once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sisa.config import SisaConfig
from sisa.forgetting import deletion
from sisa.forgetting.certificate import make_certificate
from sisa.forgetting.flow import purge_targets, relieved_shards, remove_data
from sisa.lineage import checkpoints, requests_ledger, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestStatus
from sisa.serving import engine as serving
from sisa.serving import mirror as registry
from sisa.training import run as training
from sisa.training import scheduler
from sisa.training.shard_job import ShardResult, ShardTask, train_shard
from storage.errors import RefusedError
from storage.faults import maybe_die
from storage.store import Store, now_iso


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
    if any(r.status != RequestStatus.QUEUED for r in reqs):
        return "a batch was interrupted"
    oldest = min(datetime.fromisoformat(r.received_at) for r in reqs)
    if now - oldest >= timedelta(hours=dc.batch_after_h):
        return f"the oldest request waited {(now - oldest).total_seconds() / 3600:.1f} h (deletion.batch_after_h={dc.batch_after_h:g})"
    if len(reqs) >= dc.batch_max:
        return f"{len(reqs)} requests wait (deletion.batch_max={dc.batch_max})"
    earliest = min(datetime.fromisoformat(r.deadline) for r in reqs)
    if now >= earliest - timedelta(days=dc.deadline_margin_days):
        return f"a deadline is within {dc.deadline_margin_days:g} days (deletion.deadline_margin_days)"
    return None


def earliest_slices(reqs: list[DeletionRequest]) -> dict[int, int]:
    """Per shard, the earliest slice any of the requests hit: its retrain starts there."""
    out: dict[int, int] = {}
    for r in reqs:
        for sp in r.plan.shards if r.plan else []:
            out[sp.shard_id] = min(out.get(sp.shard_id, sp.earliest_slice), sp.earliest_slice)
    return out


def batch_base(store: Store, serving: dict[int, str], reqs: list[DeletionRequest], earliest: dict[int, int]) -> dict[int, str]:
    """The checkpoints a batch traces each shard's last clean checkpoint from: the serving ones,
    except where a bridge changed an affected shard. An --isolate bridge left it out: take the
    checkpoint its request saw serving (else the shard would retrain from slice 0). A --fast
    bridge serves an approximate checkpoint computed from the text being forgotten: take the
    exact one under it (else, when the records' slice was not trained yet, it would be kept)."""
    base = dict(serving)
    for r in reqs:
        for c in r.checkpoints_before:
            shard = c["shard_id"]
            if shard in earliest and shard not in base and c["checkpoint_id"] in checkpoints.checkpoint_ids(store, shard):
                base[shard] = c["checkpoint_id"]
    for shard in earliest:
        while shard in base and checkpoints.is_approximate(base[shard]):
            base[shard] = checkpoints.parent_of(store, base[shard])
    return base


def plan_batch(store: Store, cfg: SisaConfig, base: dict[int, str], earliest: dict[int, int], train_new: bool) -> tuple[list[ShardTask], dict[int, str]]:
    """Tasks and reused shards. Affected shards retrain from their last clean checkpoint through
    the last slice a checkpoint sealed (with `train_new`, through the last slice: the new slices
    train in the same job); with `train_new`, unaffected shards train their pending slices too."""
    start = relieved_shards(store, base, earliest)
    sealed = checkpoints.sealed_slices(store)
    populated = {r["shard_id"] for r in store.index.counts().to_pylist()}
    tasks, reused = [], {}
    for shard in range(store.num_shards):
        slices = checkpoints.shard_slices(store, shard)
        if not slices or shard not in populated and shard not in base and shard not in earliest:
            continue
        parent = start.get(shard)
        done = checkpoints.slice_of(parent) if parent else -1
        if shard in earliest:
            last = max(slices) if train_new else sealed.get(shard, -1)
        elif train_new:
            last = max(slices)
        else:
            last = done
        pending = tuple(range(done + 1, last + 1))
        if pending:
            tasks.append(ShardTask(store.uri, cfg.to_dict(), shard, pending, parent, purpose="forget" if shard in earliest else "train"))
        elif parent:
            reused[shard] = parent
    return tasks, reused


def measure_queued(store: Store, cfg: SisaConfig, r: DeletionRequest, texts: list[str], prompts: list[str | None] | None) -> None:
    """The evidence `sisa forget` measures at once, measured for a queued request by its batch:
    the records' loss under the version that served when it came, and under its relief."""
    if "loss_before" not in r.evidence and r.version_before is not None:
        before = versions.read(store, r.version_before).shards
        m = serving.measure_records(store, cfg, before, texts, prompts)
        r.evidence["loss_before"] = m.get("ensemble")
        unaffected = [s for s in before if r.plan and s not in r.plan.shard_ids]
        if unaffected and m.get("per_shard"):
            r.evidence["loss_unseen_shards"] = serving.mean([m["per_shard"][str(s)] for s in unaffected])
        r.evidence["answer_tokens_only"] = prompts is not None
    relief = r.versions.get("relief")
    if relief is not None and "loss_relief" not in r.evidence:
        r.evidence["loss_relief"] = serving.measure_records(store, cfg, versions.read(store, relief).shards, texts, prompts).get("ensemble")


def process(
    store: Store,
    cfg: SisaConfig,
    train_new: bool = False,
    evidence: bool = True,
    log: Callable[[str], None] | None = None,
    unlocked: Callable[[], AbstractContextManager] | None = None,
) -> BatchResult:
    """Carry out every queued request in one batch. The caller holds the jobs lock and the
    writer lock; `unlocked()` (e.g. `StoreLock.released`) lets go of the writer lock while the
    shard jobs train, so requests filed meanwhile are queued with their relief at once. The
    batch's version then keeps their shards relieved too."""
    log = log or (lambda msg: None)
    started = time.perf_counter()
    reqs = queued_requests(store)
    if not reqs:
        return BatchResult(None)
    # A request cut short before it was queued, or carried out alone, may serve an approximate
    # checkpoint now, and commits from the version it started from when it resumes: it goes first.
    batched = {r.request_id for r in reqs}
    unfinished = [r.request_id for r in requests_ledger.open_requests(store) if r.request_id not in batched]
    if unfinished:
        raise RefusedError(f"request(s) {', '.join(unfinished)} are not finished; run `sisa forget --resume` first, then `sisa process`")
    batch_id = next((r.batch_id for r in reqs if r.batch_id), None) or f"batch-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    log(f"{batch_id}: {len(reqs)} request(s)")

    # 1. delete every request's records, or replace a rectification's text with the staged one
    #    (the old text is read into memory first, for the evidence)
    texts: dict[str, tuple[list[str], list[str | None] | None]] = {}
    for r in reqs:
        r.batch_id = batch_id
        if r.status == RequestStatus.QUEUED:
            rows = deletion.find_live_by_hashes(store, set(r.target_hashes))
            if evidence and rows.num_rows:
                texts[r.request_id] = deletion.read_texts(store, rows)
                measure_queued(store, cfg, r, *texts[r.request_id])
            t0 = time.perf_counter()
            r.removed = remove_data(store, r, rows)
            r.timings["delete_data_s"] = time.perf_counter() - t0
            r.move_to(RequestStatus.DATA_DELETED)
        requests_ledger.write_request(store, r)
    maybe_die("batch-after-delete")

    # 2. plan together, retrain each affected shard once, commit one version
    entry = next((v for v in versions.all_versions(store) if v.reason == "forget-batch" and v.request_id == batch_id), None)
    results: list[ShardResult] = []
    for r in reqs:
        if r.status == RequestStatus.DATA_DELETED:
            r.move_to(RequestStatus.RETRAINING)
            requests_ledger.write_request(store, r)
    if entry is None:
        current = versions.current(store)
        base = versions.shard_checkpoints(current)
        if current is not None or train_new:
            t0 = time.perf_counter()
            earliest = earliest_slices(reqs)
            tasks, reused = plan_batch(store, cfg, batch_base(store, base, reqs, earliest), earliest, train_new)
            with unlocked() if unlocked is not None and tasks else nullcontext():
                results = scheduler.run_shard_jobs(train_shard, tasks, cfg.scheduler, desc="retrain shards") if tasks else []
            trained = dict(reused)
            trained.update({r.shard_id: r.last_checkpoint_id for r in results})
            if trained:
                # Requests filed while the writer lock was free have their relief serving: the
                # batch's version keeps each shard they hit at its checkpoint before the hit.
                late = [r for r in requests_ledger.open_requests(store) if r.request_id not in batched]
                shards = relieved_shards(store, trained, earliest_slices(late))
                if late:
                    log(f"{batch_id}: {len(late)} request(s) filed during the batch stay relieved: {', '.join(r.request_id for r in late)}")
                entry = versions.commit_version(
                    store, shards, "forget-batch", cfg.training_fingerprint(), cfg.model.name, aggregation=cfg.serving.aggregation,
                    request_id=batch_id, request_ids=[r.request_id for r in reqs], allow_empty=True,
                    excluded_shards=sorted(set(trained) - set(shards)),
                )
                retrain_s = time.perf_counter() - t0
                registry.track_version(store, cfg, entry, results, retrain_s)
                log(f"exact version {entry.model_version} serves (retrained shard(s) {[x.shard_id for x in results]} once for {len(reqs)} request(s) in {retrain_s:.1f}s)")
                for r in reqs:
                    r.timings["retrain_s"] = retrain_s
                    r.retrained = [{"shard_id": x.shard_id, "slices": [s.slice_idx for s in x.slices], "steps": sum(s.steps for s in x.slices), "tokens": x.tokens, "wall_s": x.wall_s} for x in results]
    maybe_die("batch-after-commit")
    for r in reqs:
        r.versions["exact"] = entry.model_version if entry else None
        if entry and r.request_id in texts:
            t, p = texts[r.request_id]
            r.evidence["loss_after"] = serving.measure_records(store, cfg, entry.shards, t, p).get("ensemble")
        requests_ledger.write_request(store, r)

    # 3. purge once, certify each request on its own
    registry.ensure_tracked(store, cfg)
    t0 = time.perf_counter()
    hashes, legacy = purge_targets(store, reqs)
    report = deletion.purge(store, cfg, hashes, batch_id, legacy)
    for r in reqs:
        r.purge = report
        r.timings["purge_s"] = time.perf_counter() - t0
        r.certificate = make_certificate(store, r)
        r.completed_at = now_iso()
        r.move_to(RequestStatus.COMPLETED)
        requests_ledger.write_request(store, r)
    log(f"{batch_id}: purged {len(report['checkpoints'])} checkpoint(s) and {len(report['versions'])} version(s); {len(reqs)} request(s) completed")
    return BatchResult(batch_id, reqs, entry.model_version if entry else None, results, time.perf_counter() - started)


def refuse_if_requests_open(store: Store, doing: str) -> None:
    """Requests in flight must finish first; queued ones, and those of a batch a crash
    interrupted, are the batch's (training runs it first)."""
    open_reqs = [r.request_id for r in requests_ledger.open_requests(store) if not r.batch_owned]
    if open_reqs:
        raise RefusedError(
            f"deletion request(s) {', '.join(open_reqs)} are still open; {doing} now could bring "
            "deleted data back. Run `sisa forget --resume --config ...` first."
        )


def train_store(store: Store, cfg: SisaConfig, from_scratch: bool = False, reason: str = "train") -> training.TrainResult:
    """`sisa train`: requests in flight refuse it; a queued batch is carried out first, with the
    new slices trained in the same shard jobs; then every pending slice trains."""
    started = time.perf_counter()
    refuse_if_requests_open(store, "training")
    if queued_requests(store):
        batch = process(store, cfg, train_new=not from_scratch)
        if not from_scratch:
            wall = time.perf_counter() - started
            return training.TrainResult(batch.model_version, batch.retrained, {}, wall, noop=not batch.retrained, batch_id=batch.batch_id)
    return training.train(store, cfg, from_scratch, reason)
