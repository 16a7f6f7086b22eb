"""Forget records: exact deletion, with an optional approximate or isolating fast path.

    sisa forget --config C --subject person-00003 [--fast | --isolate] [--dry-run] [--json]
    sisa forget --config C --ids a,b,c | --ids-file F | --source S | --ingest-id I
    sisa forget --config C --resume

1. Select and validate: unknown ids are an error (or skipped with --allow-missing); ids an
   earlier request deleted are a no-op. --dry-run prints the plan and stops.
2. Ledger: the request (keyed hashes only) is written durably before anything is destroyed.
3. Evidence, while the text is still in memory: the records' loss under the serving model.
4. Fast path (optional): --fast unlearns approximately (NPO) on the affected shards' adapters and
   serves that version at once; --isolate serves the unaffected shards alone.
5. Delete the records from the slice files and the index.                  → data_deleted
6. Retrain each affected shard from the checkpoint before its earliest affected slice, all in
   parallel; unaffected shards are reused byte for byte. Commit; the alias follows.  → retraining
7. Purge every checkpoint whose lineage holds a deleted record, mark the versions that held
   them purged, delete their MLflow runs; write the certificate.            → completed
"""

from __future__ import annotations

import argparse
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.common import open_store, print_json, print_table
from pipelines.train import ensure_tracked, track_version
from sisa import checkpoints, deletion, scheduler, serving, unlearning, versions
from sisa.certificate import make_certificate
from sisa.config import SisaConfig
from sisa.planner import DeletionPlan, plan_deletion
from sisa.trainer import ShardTask, train_shard
from storage import ledgers
from storage.errors import RefusedError, ValidationError
from storage.faults import maybe_die
from storage.store import Store, checkpoint_slice, now_iso


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


# -- 1. select and plan ------------------------------------------------------------------------
def make_plan(store: Store, cfg: SisaConfig, sel: deletion.Selection) -> DeletionPlan:
    rows = sel.rows
    hits = list(zip(rows["shard_id"].to_pylist(), rows["slice_idx"].to_pylist(), strict=True))
    # Records per slice after the deletion: the index's counts minus the selected rows' (Arrow
    # group-bys, no Python loop over the index); emptied and checkpoint-only slices stay at 0.
    counts: dict[int, dict[int, int]] = {shard: dict.fromkeys(store.slices(shard), 0) for shard in range(store.num_shards)}
    for r in store.index.counts().to_pylist():
        counts[r["shard_id"]][r["slice_idx"]] = r["records"]
    for shard, sl in hits:
        counts[shard][sl] -= 1
    plan = plan_deletion(sel.kind, hits, counts, store.num_shards, cfg.training.epochs, cfg.sharding.slice_mode)
    plan.missing = len(sel.missing)
    plan.already_deleted = len(sel.already_deleted)
    return plan


def _new_request(store: Store, cfg: SisaConfig, sel: deletion.Selection, plan: DeletionPlan, mode: str) -> dict[str, Any]:
    received = datetime.now(UTC)
    ids = sel.rows["record_id"].to_pylist()
    serving = store.current_version()
    return {
        "request_id": f"req-{received:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
        "selector": {"kind": sel.kind, "value_hashes": deletion.selector_hashes(store, sel.kind, sel.values), "value_hash": store.hash_id("\n".join(sorted(sel.values)))},
        "id_hashes": sorted(store.hash_ids(ids)),
        # So that a later --subject for a person whose records all went by id is a no-op too.
        "subject_hashes": deletion.selector_hashes(store, "subject", sorted({s for s in sel.rows["subject_id"].to_pylist() if s})),
        "records": len(ids),
        "missing_skipped": len(sel.missing),
        "received_at": received.isoformat(timespec="milliseconds"),
        "deadline": (received + timedelta(days=cfg.unlearning.deadline_days)).isoformat(timespec="milliseconds"),
        "status": "received",
        "history": [{"status": "received", "at": now_iso()}],
        "mode": mode,
        "plan": plan.to_dict(),
        "version_before": serving,
        # Recorded now: after the purge, the tainted ones among them no longer exist to be read.
        "checkpoints_before": [
            {"shard_id": s, "checkpoint_id": c, "adapter_sha256": checkpoints.read_manifest(store, s, c)["files"]["adapter_model.safetensors"]}
            for s, c in sorted(versions.shard_checkpoints(versions.current(store)).items())
        ],
        "versions": {},
        "timings": {},
        "evidence": {},
    }


def _set_status(store: Store, req: dict[str, Any], status: str, **extra: Any) -> None:
    req["status"] = status
    req["history"].append({"status": status, "at": now_iso()})
    req.update(extra)
    ledgers.write_request(store.fs, req)


# -- the recipe --------------------------------------------------------------------------------
def run(
    cfg: SisaConfig,
    kind: str,
    values: list[str],
    fast: bool = False,
    isolate: bool = False,
    dry_run: bool = False,
    allow_missing: bool = False,
    evidence: bool = True,
    quiet: bool = False,
    on_version=None,
    holdout: str | tuple[list[str], list[str | None] | None] | None = None,
) -> dict[str, Any]:
    """`on_version(kind, version_entry)` is called after each commit (approximate/isolate/exact),
    while the selected texts are still in this process's memory (the demo measures with it).
    `holdout`: records no model saw (a file, or (texts, prompts)), scored beside the deleted ones."""
    if fast and isolate:
        raise ValidationError("choose one of --fast and --isolate")
    store = open_store(cfg)
    with store.lock("forget", cfg.store.lock_timeout_s):
        store.refresh()
        open_reqs = [r["request_id"] for r in ledgers.list_requests(store.fs) if r["status"] in deletion.OPEN]
        if open_reqs and not dry_run:
            raise RefusedError(f"request(s) {', '.join(open_reqs)} are not finished; run `sisa forget --resume` first")
        # 1. select, validate, plan
        sel = deletion.select_records(store, kind, values)
        if sel.missing and not allow_missing:
            raise ValidationError(f"{deletion.describe_missing(sel)}; nothing was changed (pass --allow-missing to skip them)")
        plan = make_plan(store, cfg, sel)
        if sel.rows.num_rows == 0:
            return {"noop": True, "already_deleted": len(sel.already_deleted), "missing": len(sel.missing), "plan": plan.to_dict()}
        if dry_run:
            return {"dry_run": True, "plan": plan.to_dict()}
        mode = "fast" if fast else "isolate" if isolate else "exact"
        serving_version = versions.current(store)
        if isolate and serving_version is not None:
            left = set(versions.shard_checkpoints(serving_version)) - {s.shard_id for s in plan.shards}
            if not left:
                raise RefusedError("--isolate needs at least one unaffected shard to serve; every shard holds some of these records")
        # 2. the ledger entry comes first
        req = _new_request(store, cfg, sel, plan, mode)
        ledgers.write_request(store.fs, req)
        maybe_die("forget-after-ledger")
        _log(quiet, f"request {req['request_id']}: {req['records']} record(s) in shard(s) {[s.shard_id for s in plan.shards]} (retrain cost {plan.cost_fraction:.1%} of a full retrain)")
        started = time.perf_counter()
        texts, prompts = deletion.read_texts(store, sel.rows) if evidence else ([], None)
        held = None
        if evidence and holdout:
            held = holdout if isinstance(holdout, tuple) else _read_holdout(cfg, holdout)
        return _carry_out(store, cfg, req, sel.rows, texts, prompts, started, quiet, on_version, held)


def _read_holdout(cfg: SisaConfig, path: str) -> tuple[list[str], list[str | None] | None]:
    """Records no model saw (a file in the ingest formats): the baseline a forgotten record
    should look like after the exact path. Read into memory only, never stored."""
    from sisa.ingest import normalise
    from sisa.sources import read_source

    table, problems = normalise(read_source(path), cfg)
    if problems:
        raise ValidationError("--holdout cannot be read:\n" + "\n".join(f"  - {p}" for p in problems))
    prompts = table["prompt"].to_pylist() if "prompt" in table.column_names else None
    return table["text"].to_pylist(), prompts


def _carry_out(store: Store, cfg: SisaConfig, req: dict, rows, texts, prompts, started: float, quiet: bool, on_version=None, held=None) -> dict[str, Any]:
    try:
        return _steps(store, cfg, req, rows, texts, prompts, started, quiet, on_version or (lambda kind, entry: None), held)
    except Exception as e:
        # The request stays open and resumable; the serving version is whatever was committed last.
        req.setdefault("errors", []).append({"at": now_iso(), "error": f"{type(e).__name__}: {getattr(e, 'message', '')[:300]}"})
        ledgers.write_request(store.fs, req)
        raise


def _steps(store: Store, cfg: SisaConfig, req: dict, rows, texts, prompts, started: float, quiet: bool, on_version, held=None) -> dict[str, Any]:
    before = versions.current(store)
    before_shards = versions.shard_checkpoints(before)
    affected = sorted({int(s) for s in rows["shard_id"].to_pylist()})
    ev = req["evidence"]
    # 3. evidence under the serving model, and a stranger baseline: shards that never held them
    if texts and before_shards and req["status"] == "received" and "loss_before" not in ev:
        m = serving.measure_records(store, cfg, before_shards, texts, prompts)
        ev["loss_before"] = m.get("ensemble")
        unaffected = {s: c for s, c in before_shards.items() if s not in affected}
        if unaffected:
            ev["loss_unseen_shards"] = serving.mean([m["per_shard"][str(s)] for s in unaffected])
        ev["answer_tokens_only"] = prompts is not None
        if held:
            ev["holdout_records"] = len(held[0])
            ev["holdout_before"] = serving.measure_records(store, cfg, before_shards, *held).get("ensemble")
        ledgers.write_request(store.fs, req)

    # 4. fast paths
    if req["status"] == "received" and before_shards and req["mode"] in ("fast", "isolate") and "approximate" not in req["versions"] and "isolate" not in req["versions"]:
        t0 = time.perf_counter()
        if req["mode"] == "fast":
            shards = unlearning.unlearn_shards(store, cfg, req["request_id"], rows, before_shards)
            entry = versions.commit_version(store, shards, "forget-fast", cfg.training_fingerprint(), cfg.model.name, approximate=True, request_id=req["request_id"])
            req["versions"]["approximate"] = entry["model_version"]
            label = "approximate"
        else:
            shards = {s: c for s, c in before_shards.items() if s not in affected}
            entry = versions.commit_version(store, shards, "forget-isolate", cfg.training_fingerprint(), cfg.model.name, excluded_shards=affected, request_id=req["request_id"])
            req["versions"]["isolate"] = entry["model_version"]
            label = "isolating"
        req["timings"]["fast_path_s"] = time.perf_counter() - t0
        ledgers.write_request(store.fs, req)
        track_version(store, cfg, entry, [], req["timings"]["fast_path_s"])
        _log(quiet, f"{label} version {entry['model_version']} serves after {time.perf_counter() - started:.1f}s")
        on_version(label, entry)
        if texts and req["mode"] == "fast":
            ev["loss_fast_path"] = serving.measure_records(store, cfg, shards, texts, prompts).get("ensemble")
            if held:
                ev["holdout_fast_path"] = serving.measure_records(store, cfg, shards, *held).get("ensemble")
            ledgers.write_request(store.fs, req)

    # 5. delete the data
    if req["status"] == "received":
        t0 = time.perf_counter()
        hashes = set(req["id_hashes"])
        live = rows if rows.num_rows else deletion.find_live_by_hashes(store, hashes)
        removed = deletion.remove_records(store, live)
        req["timings"]["delete_data_s"] = time.perf_counter() - t0
        _set_status(store, req, "data_deleted", removed=removed)
        _log(quiet, f"deleted {removed} record(s) from the slice files and the index")
        maybe_die("forget-after-delete")

    # 6. retrain affected shards from the checkpoint before the earliest affected slice
    if req["status"] in ("data_deleted", "retraining") and "exact" not in req["versions"]:
        _set_status(store, req, "retraining")
        t0 = time.perf_counter()
        base = ledgers.read_version(store.fs, req["version_before"]) if req["version_before"] else None
        base_shards = versions.shard_checkpoints(base)
        tasks = []
        for sp in req["plan"]["shards"]:
            shard = sp["shard_id"]
            serving_ckpt = base_shards.get(shard)
            if serving_ckpt is None or sp["earliest_slice"] > checkpoint_slice(serving_ckpt):
                continue  # never trained on these records: deleting the data was enough
            parent = deletion.retrain_parent(store, serving_ckpt, sp["earliest_slice"])
            last = max(store.slices(shard))
            tasks.append(ShardTask(store.uri, cfg.to_dict(), shard, tuple(range(sp["earliest_slice"], last + 1)), parent, purpose="forget"))
        results = scheduler.run_shard_jobs(train_shard, tasks, cfg.scheduler, desc="retrain shards") if tasks else []
        if base_shards:
            shards = dict(base_shards)
            shards.update({r.shard_id: r.last_checkpoint_id for r in results})
            entry = versions.commit_version(store, shards, "forget", cfg.training_fingerprint(), cfg.model.name, request_id=req["request_id"])
            req["versions"]["exact"] = entry["model_version"]
            req["timings"]["retrain_s"] = time.perf_counter() - t0
            req["retrained"] = [
                {"shard_id": r.shard_id, "slices": [s.slice_idx for s in r.slices], "steps": sum(s.steps for s in r.slices), "tokens": r.tokens, "wall_s": r.wall_s}
                for r in results
            ]
            ledgers.write_request(store.fs, req)
            track_version(store, cfg, entry, results, req["timings"]["retrain_s"])
            _log(quiet, f"exact version {entry['model_version']} serves (retrained shard(s) {[r.shard_id for r in results]} in {req['timings']['retrain_s']:.1f}s)")
            on_version("exact", entry)
        else:
            req["versions"]["exact"] = None
            ledgers.write_request(store.fs, req)
        if texts and req["versions"].get("exact"):
            now_serving = versions.shard_checkpoints(versions.current(store))
            ev["loss_after"] = serving.measure_records(store, cfg, now_serving, texts, prompts).get("ensemble")
            if held:
                ev["holdout_after"] = serving.measure_records(store, cfg, now_serving, *held).get("ensemble")
            ledgers.write_request(store.fs, req)

    # 7. purge and certify. First make MLflow match the ledger: a version committed before a crash
    # or an MLflow outage is logged now, and the alias follows the serving version, so the purge
    # below never leaves the alias on a deleted registered version.
    ensure_tracked(store, cfg)
    t0 = time.perf_counter()
    hashes = set(req["id_hashes"])
    report = deletion.purge(store, cfg, hashes, req["request_id"])
    req["timings"]["purge_s"] = time.perf_counter() - t0
    req["timings"]["total_s"] = time.perf_counter() - started
    req["purge"] = report
    req["certificate"] = make_certificate(store, req, before_shards)
    _set_status(store, req, "completed", completed_at=now_iso())
    _log(quiet, f"purged {len(report['checkpoints'])} checkpoint(s) and {len(report['versions'])} version(s); request {req['request_id']} completed")
    return {"request_id": req["request_id"], "request": req}


def resume(cfg: SisaConfig, quiet: bool = False) -> list[dict[str, Any]]:
    """Finish every open request from where it stopped (the text may already be gone)."""
    store = open_store(cfg)
    out = []
    with store.lock("forget --resume", cfg.store.lock_timeout_s):
        for req in ledgers.list_requests(store.fs):
            if req["status"] not in deletion.OPEN:
                continue
            _log(quiet, f"resuming {req['request_id']} from status {req['status']}")
            rows = deletion.find_live_by_hashes(store, set(req["id_hashes"])) if req["status"] == "received" else None
            texts, prompts = deletion.read_texts(store, rows) if rows is not None and rows.num_rows else ([], None)
            out.append(_carry_out(store, cfg, req, rows if rows is not None else _empty_rows(store), texts, prompts, time.perf_counter(), quiet))
    return out


def _empty_rows(store: Store):
    return store.index.table.slice(0, 0)


# -- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to forget (one)")
    g.add_argument("--ids", help="comma-separated record ids")
    g.add_argument("--ids-file", help="a file with one record id per line")
    g.add_argument("--subject", help="every record of this data subject (subject_id)")
    g.add_argument("--source", help="every record ingested from this source")
    g.add_argument("--ingest-id", help="every record of this ingest batch (rolls back a bad ingest)")
    p.add_argument("--fast", action="store_true", help="serve an approximate (NPO) unlearned version at once, then the exact one")
    p.add_argument("--isolate", action="store_true", help="serve the unaffected shards alone at once, then the exact version")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--allow-missing", action="store_true", help="skip unknown ids instead of failing")
    p.add_argument("--resume", action="store_true", help="finish interrupted requests")
    p.add_argument("--no-evidence", action="store_true", help="skip the memorization measurements (faster)")
    p.add_argument("--holdout", metavar="FILE", help="records no model saw (JSONL/CSV/Parquet): their loss is the certificate's stranger baseline")


def _selector(args: argparse.Namespace) -> tuple[str, list[str]]:
    given = [(k, v) for k, v in (("ids", args.ids), ("ids_file", args.ids_file), ("subject", args.subject), ("source", args.source), ("ingest_id", args.ingest_id)) if v is not None]
    if len(given) != 1:
        raise ValidationError("give exactly one of --ids, --ids-file, --subject, --source, --ingest-id")
    kind, value = given[0]
    if kind == "ids":
        return "ids", [v for v in value.split(",")]
    if kind == "ids_file":
        try:
            with open(value, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValidationError(f"cannot read --ids-file {value!r}: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise ValidationError(f"--ids-file {value!r} is not UTF-8 text (line {line}); nothing was changed") from None
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # as text mode reads lines
        return "ids", [line.strip() for line in lines if line.strip()]
    return kind, [value]


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    if args.resume:
        results = resume(cfg, quiet=args.json)
        if args.json:
            print_json([r["request"] for r in results])
        elif not results:
            print("no open requests")
        return 0
    kind, values = _selector(args)
    res = run(cfg, kind, values, args.fast, args.isolate, args.dry_run, args.allow_missing, not args.no_evidence, quiet=args.json, holdout=args.holdout)
    if args.json:
        print_json(res)
        return 0
    if res.get("noop"):
        n = res.get("already_deleted") or 0
        print(f"nothing to forget: {n} already deleted by an earlier request, {res['missing']} unknown skipped; no-op")
        return 0
    plan = res["plan"] if "plan" in res else res["request"]["plan"]
    if res.get("dry_run"):
        print(f"plan: forget {plan['records']} record(s) selected by {plan['selector_kind']}")
        print_table(
            [{"shard_id": s["shard_id"], "records": s["records"], "earliest_slice": s["earliest_slice"], "retrain_slices": f"{s['earliest_slice']}..{s['last_slice']}"} for s in plan["shards"]],
            ["shard_id", "records", "earliest_slice", "retrain_slices"],
        )
        print(f"unaffected shards (reused byte for byte): {plan['unaffected_shards']}")
        print(f"retrain cost: {plan['cost_fraction']:.1%} of a full retrain; dry run, nothing changed")
        return 0
    req = res["request"]
    print(f"certificate: sisa certificate {req['request_id']} --config ...  (lineage check {'passed' if req['certificate']['lineage_check']['passed'] else 'FAILED'})")
    return 0
