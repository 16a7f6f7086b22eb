"""The phases of a request's life: what each does to the requests a run carries.

`sisa/forgetting/runner.py` holds the table (which phase takes a request in which status and
leaves it in which) and drives requests through it; the functions here do the work of one phase
for a group of requests and never write the ledger: the runner writes each request after each
phase. Every function skips what an earlier run already recorded in the request, so a run
resumed after a crash picks up where the last one stopped. Every run is a batch: one plan of
where each affected shard's retrain starts (`plan_retrain`), one retrain per shard, one exact
version, one purge. A request carried out at once is a batch of one; only how its run is named
and what it tells differ (`Run`). Text lives only in `InFlight` (memory), never in the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sisa.config import SisaConfig
from sisa.data.formats import Item
from sisa.evidence import measures as evidence
from sisa.forgetting import corrections, editing, purge, unlearning
from sisa.forgetting.certificate import make_certificate
from sisa.forgetting.deferred import Deferred
from sisa.forgetting.erasure import remove_data
from sisa.forgetting.options import Texts
from sisa.forgetting.selection import find_live_by_hashes
from sisa.lineage import checkpoints, requests_ledger, signing, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestKind, RequestMode, RequestStatus
from sisa.lineage.requests_ledger import VersionKind as V
from sisa.lineage.versions import ModelVersion
from sisa.serving import engine, mirror
from sisa.storage.schemas import FORGETTING, RECTIFYING
from sisa.storage.store import Store, now_iso
from sisa.training import scheduler
from sisa.training.run import plan_shard_tasks
from sisa.training.shard_job import ShardResult, ShardTask, train_shard


@dataclass
class InFlight:
    """One request a run carries, with what the run holds of it in memory only: the selected index
    rows, their text (for the evidence and the fast path), a holdout and the evidence targets."""

    request: DeletionRequest
    rows: pa.Table
    texts: list[Item] = field(default_factory=list)
    prompts: list[str | None] | None = None
    holdout: Texts | None = None
    targets: evidence.Targets | None = None  # questions for the trio, leak@k and MIA (--probes, --holdout)
    locality_before: list[list[int]] | None = None  # the version before's locality predictions
    new: bool = False  # not in the ledger yet: the ledger phase records it
    fix: corrections.Corrections | None = None  # a new rectification's corrections, staged before the ledger
    bridge: tuple[str, dict[int, str]] | None = None  # (evidence label, shards) of a bridge this run committed


@dataclass
class Run:
    """What the requests of one run share: the batch, what to report progress to, and what the
    retrain produced. A request carried out at once (`forget`, `rectify`, `resume`) is a batch of
    one with no `batch_id`: the ledger gives it no batch, its run is named by its request id (the
    version it commits, the purge, the fault points `forget-after-*`), its version's reason is
    `forget`, and it tells its progress as a request rather than as a batch. Those are the only
    differences, and they live here."""

    save: Callable[[InFlight], None]  # the runner's ledger write, for a version just committed
    batch_id: str | None = None  # None: a batch of one, carried out at once
    name: str = ""  # the batch id, or the request id of a batch of one (set by the runner)
    train_new: bool = False  # a batch run by `sisa train`: the new slices train in the same shard jobs
    unlocked: Callable[[], AbstractContextManager] | None = None  # lets go of the writer lock while shard jobs train
    on_version: Callable[[str, ModelVersion], None] = lambda kind, entry: None
    log: Callable[[str], None] = lambda msg: None
    started: float = field(default_factory=time.perf_counter)
    # The evidence's ensembles, on one base with each checkpoint's adapter loaded once (a caller's
    # own, such as the demo's, or the run's).
    models: engine.EnsemblePool = field(default_factory=engine.EnsemblePool)
    version: ModelVersion | None = None  # the batch's exact version
    results: list[ShardResult] = field(default_factory=list)  # the batch's shard jobs
    deferred: Deferred = field(default_factory=Deferred)  # evidence done while the shard jobs train

    @property
    def at_once(self) -> bool:
        return self.batch_id is None

    @property
    def reason(self) -> str:
        """The reason its exact version is committed under."""
        return "forget" if self.at_once else "forget-batch"

    @property
    def fault_prefix(self) -> str:
        """What its crash-injection points are named after (storage/faults.py)."""
        return "forget" if self.at_once else "batch"

    def once(self, items: list[InFlight]) -> str:
        """How its exact version's line names the requests it retrained for."""
        return "" if self.at_once else f" once for {len(items)} request(s)"

    def deleted(self, req: DeletionRequest) -> None:
        """A request carried out at once says what its delete phase did; a batch says it at the end."""
        if not self.at_once:
            return
        if req.kind == RequestKind.RECTIFY:
            self.log(f"replaced the text of {req.removed} record(s) in the slice files and the index")
        else:
            self.log(f"deleted {req.removed} record(s) from the slice files and the index")

    def completed(self, items: list[InFlight]) -> None:
        """The run's last line: per request at once (with its whole time), or the batch's."""
        for it in items if self.at_once else []:
            req = it.request
            req.timings["total_s"] = time.perf_counter() - self.started
            self.log(
                f"purged {len(req.purge['checkpoints'])} checkpoint(s) and {len(req.purge['versions'])} version(s); "
                f"request {req.request_id} completed"
            )
        if not self.at_once:
            report = items[0].request.purge
            self.log(
                f"{self.name}: purged {len(report['checkpoints'])} checkpoint(s) and {len(report['versions'])} "
                f"version(s); {len(items)} request(s) completed"
            )

    def later(self, it: InFlight, work: Callable[[], None]) -> None:
        """`work` (evidence of the version before or the bridge) beside this run's retrain, when the
        run carries the request out (sisa/forgetting/deferred.py); else now: a request queued, or
        awaiting approval, is retrained by another run."""
        req = it.request
        if not req.queued and not req.needs_approval:
            self.deferred.later(work)
        else:
            work()


def before_shards(store: Store, req: DeletionRequest) -> dict[int, str]:
    """The shard checkpoints of the version that served when the request came."""
    return versions.shard_checkpoints(versions.read(store, req.version_before)) if req.version_before else {}


def affected(req: DeletionRequest) -> list[int]:
    return req.plan.shard_ids if req.plan else []


# -- ledger ------------------------------------------------------------------------------------
def record(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """A new request enters the ledger (the runner writes it) before anything is destroyed; a
    rectification's new text is staged first, so a resumed request finds it."""
    for it in items:
        if it.new and it.fix is not None:
            corrections.stage(store, it.request.request_id, it.fix)
        it.new = False


def await_approval(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """→ awaiting_approval: its rule asks for approvers. Nothing is destroyed or served, but the
    relief when the rule allows it (exact, and undone if the request is rejected)."""
    for it in items:
        req = it.request
        d = req.decision
        relief_allowed = d is not None and d.relief_before_approval and req.mode == RequestMode.RELIEF
        if relief_allowed and not req.versions.has(V.RELIEF):
            _relief(store, cfg, run, it)
        run.log(
            f"request {req.request_id} awaits approval by {req.approvers_needed} approver(s) other than its "
            f"requester (rule `{d.rule if d else '-'}`): `sisa approve {req.request_id} --as NAME` or "
            f"`sisa reject {req.request_id} --reason ...`"
        )


# -- evidence ----------------------------------------------------------------------------------
def measure_before(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """Evidence under the version that served when the request came, while the text is in
    memory, and a stranger baseline: the shards that never held the records. A queued request's
    is measured by its batch, with its relief's."""
    for it in items:
        if it.request.status == RequestStatus.QUEUED:
            _measure_queued(store, cfg, it, run.models)
        else:
            run.later(it, lambda it=it: _measure_received(store, cfg, it, run.models))


def _measure_received(store: Store, cfg: SisaConfig, it: InFlight, pool: engine.EnsemblePool) -> None:
    req, ev = it.request, it.request.evidence
    before = before_shards(store, req)
    if not it.texts or not before or "loss_before" in ev:
        return
    m = engine.measure_records(store, cfg, before, it.texts, it.prompts, pool)
    ev["loss_before"] = m.get("ensemble")
    unaffected = [s for s in before if s not in affected(req)]
    if unaffected:
        ev["loss_unseen_shards"] = engine.mean([m["per_shard"][str(s)] for s in unaffected])
    ev["answer_tokens_only"] = it.prompts is not None
    if it.holdout:
        ev["holdout_records"] = len(it.holdout[0])
        ev["holdout_before"] = engine.measure_records(store, cfg, before, *it.holdout, pool).get("ensemble")


def _measure_queued(store: Store, cfg: SisaConfig, it: InFlight, pool: engine.EnsemblePool) -> None:
    """What `sisa forget` measures at once, for a queued request: the records' loss under the
    version that served when it came, and under its relief."""
    r = it.request
    if not it.texts:
        return
    if "loss_before" not in r.evidence and r.version_before is not None:
        before = versions.read(store, r.version_before).shards
        m = engine.measure_records(store, cfg, before, it.texts, it.prompts, pool)
        r.evidence["loss_before"] = m.get("ensemble")
        unaffected = [s for s in before if r.plan and s not in r.plan.shard_ids]
        if unaffected and m.get("per_shard"):
            r.evidence["loss_unseen_shards"] = engine.mean([m["per_shard"][str(s)] for s in unaffected])
        r.evidence["answer_tokens_only"] = it.prompts is not None
    relief = r.versions.get(V.RELIEF)
    if relief is not None and "loss_relief" not in r.evidence:
        r.evidence["loss_relief"] = engine.measure_records(
            store, cfg, versions.read(store, relief).shards, it.texts, it.prompts, pool
        ).get("ensemble")


def measure_targets(
    store: Store, cfg: SisaConfig, it: InFlight, label: str, shards: dict[int, str], pool: engine.EnsemblePool
) -> None:
    """The trio, leak@k and membership inference of one version (sisa/evidence/measures.py), as
    numbers under `evidence.versions.<label>`; relief, fast and exact get their privacy leak
    relative to the exact version once it is measured."""
    req = it.request
    if not it.targets:
        return
    by_version = req.evidence.setdefault("versions", {})
    if label != "before" and "before" not in by_version and req.version_before is not None:
        # Measured once the first new version serves, not before it: the relief must not wait
        # for the evidence. The version before stays on disk until the purge.
        measure_targets(store, cfg, it, "before", before_shards(store, req), pool)
    ens = pool.ensemble(store, cfg, shards)
    numbers, preds = evidence.measure(ens, it.targets, engine.scoring_length(ens), it.locality_before)
    if label == "before":
        it.locality_before = preds
    numbers["model_version"] = req.version_before if label == "before" else req.versions.get(label)
    by_version[label] = numbers
    if "exact" in by_version:
        evidence.add_privleak(by_version)


def _loss(
    store: Store, cfg: SisaConfig, it: InFlight, shards: dict[int, str], name: str, pool: engine.EnsemblePool
) -> None:
    """The records' loss (and the holdout's) under these shards, as `loss_<name>` (`holdout_<name>`)."""
    ev = it.request.evidence
    ev[f"loss_{name}"] = engine.measure_records(store, cfg, shards, it.texts, it.prompts, pool).get("ensemble")
    if it.holdout:
        ev[f"holdout_{name}"] = engine.measure_records(store, cfg, shards, *it.holdout, pool).get("ensemble")


# -- what serves until the exact version -------------------------------------------------------
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


def bridge(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """What serves until the exact version lands. Relief (the default): the current version with
    every affected shard at its last clean checkpoint, exact and instant; --fast: an approximate
    version of the affected shards (a deletion: NPO; a rectification: the edit bridge, the relief
    checkpoint taught the new text); --isolate: the unaffected shards alone."""
    for it in items:
        req = it.request
        if req.mode == RequestMode.EXACT or req.versions.bridge is not None:
            continue
        if req.mode == RequestMode.RELIEF:
            _relief(store, cfg, run, it)
            continue
        before = before_shards(store, req)
        if before:
            _fast_or_isolate(store, cfg, run, it, before)


def _relief(store: Store, cfg: SisaConfig, run: Run, it: InFlight) -> None:
    req = it.request
    t0 = time.perf_counter()
    current = versions.current(store)
    if current is None or req.plan is None:
        return
    shards = relieved_shards(store, current.shards, {sp.shard_id: sp.earliest_slice for sp in req.plan.shards})
    if shards == current.shards:  # no serving checkpoint has seen the records yet
        req.record_version(V.RELIEF, current.model_version)
        return

    def committed(entry: ModelVersion) -> None:
        req.record_version(V.RELIEF, entry.model_version)
        req.timings["relief_s"] = time.perf_counter() - t0
        # from the request's start to the commit: the relief serves from here on (the MLflow
        # mirror after it is bookkeeping)
        req.timings["relief_serves_after_s"] = time.perf_counter() - run.started
        run.save(it)

    # With no clean shard left the relief serves the base model alone: exact, if plain. Shards an
    # earlier relief already left out stay out (and say so).
    excluded = sorted((set(current.shards) | set(current.excluded_shards)) - set(shards))
    entry = mirror.publish_version(
        store,
        cfg,
        shards,
        "forget-relief",
        (),
        time.perf_counter() - t0,
        committed,
        request_id=req.request_id,
        excluded_shards=excluded,
        allow_empty=True,
    )
    run.log(
        f"relief version {entry.model_version} serves after {time.perf_counter() - run.started:.2f}s "
        "(exact: affected shard(s) at their last clean checkpoint)"
    )
    run.later(it, lambda: run.on_version("relief", entry))
    it.bridge = ("relief", shards)


def _fast_or_isolate(store: Store, cfg: SisaConfig, run: Run, it: InFlight, before: dict[int, str]) -> None:
    req = it.request
    t0 = time.perf_counter()
    fast = req.mode == RequestMode.FAST
    label, key = ("approximate", V.APPROXIMATE) if fast else ("isolating", V.ISOLATE)
    how = ""

    def committed(entry: ModelVersion) -> None:
        req.record_version(key, entry.model_version)
        req.timings["fast_path_s"] = time.perf_counter() - t0
        run.save(it)

    if fast and req.kind == RequestKind.RECTIFY:
        shards = _edit_bridge(store, cfg, it, before)
        commit: dict[str, Any] = {"approximate": True}
        how = " (edit bridge: the relief checkpoint taught the new text)"
    elif fast:
        shards = unlearning.unlearn_shards(store, cfg, req.request_id, it.rows, before)
        commit = {"approximate": True}
    else:
        shards = {s: c for s, c in before.items() if s not in affected(req)}
        commit = {"excluded_shards": affected(req)}
    entry = mirror.publish_version(
        store,
        cfg,
        shards,
        "forget-fast" if fast else "forget-isolate",
        (),
        time.perf_counter() - t0,
        committed,
        request_id=req.request_id,
        **commit,
    )
    run.log(f"{label} version {entry.model_version} serves after {time.perf_counter() - run.started:.1f}s{how}")
    run.later(it, lambda: run.on_version(label, entry))
    it.bridge = (key.value, shards)


def _edit_bridge(store: Store, cfg: SisaConfig, it: InFlight, before: dict[int, str]) -> dict[int, str]:
    """The version before with each affected shard at its relief checkpoint taught the corrected
    records' new text (sisa/forgetting/editing.py): the new text from the validated corrections
    in memory, or (resumed, approved) from where it is staged; the old text is never read."""
    req = it.request
    earliest = {sp.shard_id: sp.earliest_slice for sp in (req.plan.shards if req.plan else [])}
    relieved = relieved_shards(store, before, earliest)
    new = it.fix.new if it.fix is not None else corrections.staged(store, req.request_id)
    rows = it.rows if it.rows.num_rows else find_live_by_hashes(store, set(req.target_hashes))
    if new is None or not rows.num_rows:
        return relieved  # nothing staged to teach (cannot happen before the delete phase): the relief
    by_shard = {s: b for s, b in editing.new_records(store, new, rows).items() if s in before}
    start = {s: relieved.get(s) for s in by_shard}
    shards = dict(relieved)
    shards.update(editing.edit_shards(store, cfg, req.request_id, by_shard, start, earliest))
    return shards


def measure_bridge(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """The records' loss under the relief or the approximate version, and every version's
    evidence targets, once it serves (the isolating version's targets only)."""
    for it in items:
        if it.bridge is not None:
            run.later(it, lambda it=it: _measure_bridge(store, cfg, it, run.models))


def _measure_bridge(store: Store, cfg: SisaConfig, it: InFlight, pool: engine.EnsemblePool) -> None:
    key, shards = it.bridge
    if it.texts and key != "isolate":
        _loss(store, cfg, it, shards, "relief" if key == "relief" else "fast_path", pool)
    measure_targets(store, cfg, it, key, shards, pool)


def enqueue(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """received → queued: the records are marked `forgetting` (a rectification's `rectifying`):
    no training reads them from now on, and a batch (`sisa process`) deletes them (replaces
    their text with the staged one) and retrains later."""
    for it in items:
        req = it.request
        rows = it.rows if it.rows.num_rows else find_live_by_hashes(store, set(req.target_hashes))
        store.mark_records(
            rows["record_id"].combine_chunks(), RECTIFYING if req.kind == RequestKind.RECTIFY else FORGETTING
        )
        run.log(
            f"request {req.request_id} queued; "
            "run `sisa process` (or wait for the batching policy) for the exact version"
        )


# -- delete ------------------------------------------------------------------------------------
def delete(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """→ data_deleted: the records leave the slice files and the index (a rectification: their
    text is replaced in place by the staged new text)."""
    for it in items:
        req = it.request
        t0 = time.perf_counter()
        live = it.rows if it.rows.num_rows else find_live_by_hashes(store, set(req.target_hashes))
        req.removed = remove_data(store, req, live)
        req.timings["delete_data_s"] = time.perf_counter() - t0
        run.deleted(req)


# -- retrain and commit ------------------------------------------------------------------------
def retrained(results: list[ShardResult]) -> list[dict[str, Any]]:
    """What a request records of the shard jobs that retrained for it."""
    return [
        {
            "shard_id": r.shard_id,
            "slices": [s.slice_idx for s in r.slices],
            "steps": sum(s.steps for s in r.slices),
            "tokens": r.tokens,
            "wall_s": r.wall_s,
        }
        for r in results
    ]


# The one plan of where a run's retrain starts: a request carried out at once is a batch of one.
@dataclass(frozen=True)
class RetrainPlan:
    """A run's retrain: per affected shard the earliest slice a request of the run hit, the
    checkpoint it continues from (absent: slice 0), the shard tasks, and the shards reused as
    they are."""

    earliest: dict[int, int]
    start: dict[int, str]
    tasks: list[ShardTask]
    reused: dict[int, str]


def plan_retrain(
    store: Store, cfg: SisaConfig, serving: dict[int, str], reqs: list[DeletionRequest], train_new: bool = False
) -> RetrainPlan:
    """The one planner of where each shard's retrain starts, for any run (a request carried out
    at once, or a batch): the serving shards traced back under any bridge (`batch_base`), and
    each shard a request hit at its last checkpoint before the earliest slice any of them hit.
    The tasks come from `plan_shard_tasks`, the one shard-task planner: an affected shard
    retrains through the last slice a checkpoint sealed (one whose checkpoints never reached the
    records' slice needs nothing: deleting the data was enough); with `train_new` (`sisa
    train`), every shard's new slices train in the same jobs."""
    earliest = earliest_slices(reqs)
    start = relieved_shards(store, batch_base(store, serving, reqs, earliest), earliest)
    tasks, reused = plan_shard_tasks(store, cfg, start, earliest, through_last=train_new, train_others=train_new)
    return RetrainPlan(earliest, start, tasks, reused)


def earliest_slices(reqs: list[DeletionRequest]) -> dict[int, int]:
    """Per shard, the earliest slice any of the requests hit: its retrain starts there."""
    out: dict[int, int] = {}
    for r in reqs:
        for sp in r.plan.shards if r.plan else []:
            out[sp.shard_id] = min(out.get(sp.shard_id, sp.earliest_slice), sp.earliest_slice)
    return out


def batch_base(
    store: Store, serving_shards: dict[int, str], reqs: list[DeletionRequest], earliest: dict[int, int]
) -> dict[int, str]:
    """The checkpoints a run traces each shard's last clean checkpoint from: the serving ones,
    except where a bridge changed an affected shard. An --isolate bridge left it out: take the
    checkpoint its request saw serving (else the shard would retrain from slice 0). A --fast
    bridge serves an approximate checkpoint computed from the text being forgotten: take the
    exact one under it (else, when the records' slice was not trained yet, it would be kept); an
    edit bridge's is its relief checkpoint, or none (a fresh adapter: the shard retrains from slice 0).
    A relief left a shard hit at slice 0 out: take the one its request saw (the plan drops it again)."""
    base = dict(serving_shards)
    for r in reqs:
        for c in r.checkpoints_before:
            shard = c["shard_id"]
            if (
                shard in earliest
                and shard not in base
                and c["checkpoint_id"] in checkpoints.checkpoint_ids(store, shard)
            ):
                base[shard] = c["checkpoint_id"]
    for shard in earliest:
        while shard in base and checkpoints.is_approximate(base[shard]):
            parent = checkpoints.parent_of(store, base[shard])
            if parent is None:  # an edit bridge's fresh adapter (slice 0 hit): the retrain starts from scratch
                del base[shard]
            else:
                base[shard] = parent
    return base


def commit(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """retraining: the run's retrain as `plan_retrain` plans it (the shard jobs in parallel, Ray
    or serial), one exact version for every request of the run; MLflow follows. The version
    carries the run's name (its batch id, or the request id of a batch of one), so a resumed run
    never commits twice. Nothing served when the requests came: deleting the data was enough."""
    current = versions.current(store)
    run.version = _committed(store, run, items, current)
    owed = any(not it.request.versions.has(V.EXACT) for it in items)
    if run.version is None and owed and (current is not None or run.train_new):
        run.version = _retrain(store, cfg, run, items, versions.shard_checkpoints(current))
    for it in items:
        it.request.record_version(V.EXACT, run.version.model_version if run.version else None)


def _committed(store: Store, run: Run, items: list[InFlight], current: ModelVersion | None) -> ModelVersion | None:
    """The version this run committed before it was cut short: one carrying its name that its
    requests recorded, or that the pointer moved to before they could. One a crash left between
    its entry and the pointer move never served: the run commits afresh."""
    recorded = {it.request.versions.get(V.EXACT) for it in items} - {None}
    if current is not None:
        recorded.add(current.model_version)
    return next(
        (
            v
            for v in reversed(versions.all_versions(store))
            if v.reason == run.reason and v.request_id == run.name and v.model_version in recorded
        ),
        None,
    )


def _retrain(
    store: Store, cfg: SisaConfig, run: Run, items: list[InFlight], serving: dict[int, str]
) -> ModelVersion | None:
    if cfg.scheduler.backend != "ray" or not cfg.evidence.beside_retrain:
        run.deferred.catch_up()  # the jobs would share this process's cores: the evidence first
    started = time.perf_counter()
    plan = plan_retrain(store, cfg, serving, [it.request for it in items], run.train_new)
    # A batch lets go of the writer lock while its shard jobs train (requests filed meanwhile are
    # queued with their relief). Evidence a request carried out at once deferred is measured on
    # the core the jobs leave this process (sisa/forgetting/deferred.py): the retrain's time is
    # the jobs', not that wait.
    with run.unlocked() if run.unlocked is not None and plan.tasks else nullcontext(), run.deferred.beside():
        run.results = (
            scheduler.run_shard_jobs(train_shard, plan.tasks, cfg.scheduler, desc="retrain shards")
            if plan.tasks
            else []
        )
        trained_at = time.perf_counter()
    waited = time.perf_counter() - trained_at
    trained = dict(plan.reused)
    trained.update({r.shard_id: r.last_checkpoint_id for r in run.results})
    return (
        _publish(store, cfg, run, items, trained, lambda: time.perf_counter() - started - waited) if trained else None
    )


def _publish(
    store: Store,
    cfg: SisaConfig,
    run: Run,
    items: list[InFlight],
    trained: dict[int, str],
    retrain_s: Callable[[], float],
) -> ModelVersion:
    # Open requests outside the run (queued, filed while a batch let go of the writer lock, or
    # relieved awaiting approval) have their relief serving: the version keeps each shard they
    # hit at its checkpoint before the hit.
    ran = {it.request.request_id for it in items}
    others = [
        r
        for r in requests_ledger.open_requests(store)
        # One awaiting approval stays served as it is: relieved only if its rule let the relief serve.
        if r.request_id not in ran and (r.status != RequestStatus.AWAITING_APPROVAL or r.versions.has(V.RELIEF))
    ]
    shards = relieved_shards(store, trained, earliest_slices(others))
    if others:
        run.log(
            f"{run.name}: {len(others)} other open request(s) stay relieved: {', '.join(r.request_id for r in others)}"
        )

    def committed(entry: ModelVersion) -> None:
        for it in items:
            it.request.record_version(V.EXACT, entry.model_version)
            it.request.timings["retrain_s"] = retrain_s()
            it.request.retrained = retrained(run.results)
            run.save(it)

    entry = mirror.publish_version(
        store,
        cfg,
        shards,
        run.reason,
        run.results,
        retrain_s(),
        committed,
        request_id=run.name,
        request_ids=[it.request.request_id for it in items],
        allow_empty=True,
        excluded_shards=sorted(set(trained) - set(shards)),
    )
    took = items[0].request.timings["retrain_s"]
    shard_ids = [r.shard_id for r in run.results]
    run.log(
        f"exact version {entry.model_version} serves (retrained shard(s) {shard_ids}{run.once(items)} in {took:.1f}s)"
    )
    run.on_version("exact", entry)
    return entry


def measure_after(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """The records' loss (and the holdout's, and the evidence targets) under the exact version,
    while this run still holds their text."""
    run.deferred.catch_up()  # the versions before and bridge first: the exact one compares with them
    for it in items:
        exact = it.request.versions.get(V.EXACT)
        if not it.texts or exact is None or "loss_after" in it.request.evidence:
            continue
        shards = versions.read(store, exact).shards
        _loss(store, cfg, it, shards, "after", run.models)
        measure_targets(store, cfg, it, "exact", shards, run.models)


# -- purge and certify -------------------------------------------------------------------------
def purge_tainted(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """Every checkpoint whose lineage holds a forgotten record goes, with the versions and MLflow
    runs that held one: one purge for all the run's requests, named by the run. MLflow is first brought in line
    with the ledger: a version committed before a crash or an MLflow outage is logged now, and the
    alias follows the serving version, so the purge never leaves the alias on a deleted version."""
    run.deferred.catch_up()  # what it measures is about to go
    mirror.ensure_tracked(store, cfg)
    t0 = time.perf_counter()
    reqs = [it.request for it in items]
    hashes, legacy = purge.purge_targets(store, reqs)
    report = purge.purge(store, cfg, hashes, run.name, legacy)
    run.models.drop(report["checkpoints"])  # the evidence's copies of them, in memory
    for r in reqs:
        r.purge = report
        r.timings["purge_s"] = time.perf_counter() - t0


def certify(store: Store, cfg: SisaConfig, run: Run, items: list[InFlight]) -> None:
    """→ completed, with the certificate of what can be checked now, signed (sisa/lineage/signing.py)."""
    key = signing.signing_key(store, cfg, say=run.log)
    for it in items:
        it.request.certificate = signing.sign_certificate(make_certificate(store, it.request), key)
        it.request.completed_at = now_iso()
    run.completed(items)
