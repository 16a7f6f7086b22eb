"""Forget records: exact deletion, with an optional approximate or isolating bridge.

    sisa forget --config C --subject person-00003 [--fast | --isolate | --no-relief] [--dry-run] [--json]
    sisa forget --config C --ids a,b,c | --ids-file F | --source S | --ingest-id I
    sisa forget --config C --subject person-00003 --queue     # relief now, a batch later (`sisa process`)
    sisa forget --config C --resume
    sisa forget --config C --subject person-00003 --probes probes.jsonl --holdout strangers.jsonl   # evidence

The recipe (each step is a phase of the request runner, sisa/forgetting/runner.py):
1. Select and validate: unknown ids are an error (or skipped with --allow-missing); ids an
   earlier request deleted are a no-op. --dry-run prints the plan and stops.
2. Ledger: the request (keyed hashes only) is written durably before anything is destroyed, with
   the rule of the policy that decided it (`deletion.policy`: method, approvers, deadline).
   When the rule asks for approvers it stops here, `awaiting_approval`: nothing served (unless the
   rule lets the relief serve) or deleted until `sisa approve ID --as NAME` (someone other than
   the requester, `--as`) carries it out, or `sisa reject ID --reason ...` ends it.
3. Evidence, while the text is still in memory: the records' loss under the serving model.
4. Relief, exact from the first second (the default, `deletion.relief`): each affected shard
   serves its last clean checkpoint (none when slice 0 is hit). Or --fast: an approximate (NPO)
   version; or --isolate: the unaffected shards alone. With --queue the request stops here,
   its records marked `forgetting`; `sisa process` (or `sisa train`) runs steps 5-7 in a batch.
5. Delete the records from the slice files and the index.                  → data_deleted
6. Retrain each affected shard from the checkpoint before its earliest affected slice, all in
   parallel; unaffected shards are reused byte for byte. Commit; the alias follows.  → retraining
7. Purge every checkpoint whose lineage holds a deleted record, mark the versions that held
   them purged, delete their MLflow runs; write the certificate.            → completed
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sisa.pipelines import request_options
from sisa.pipelines.common import print_json
from sisa.storage.errors import ValidationError

from sisa.api import SisaStore
from sisa.config import SisaConfig
from sisa.evidence import Probe
from sisa.forgetting import Texts
from sisa.lineage import ModelVersion


def run(
    cfg: SisaConfig,
    kind: str,
    values: list[str],
    fast: bool = False,
    isolate: bool = False,
    dry_run: bool = False,
    queue: bool = False,
    relief: bool | None = None,
    allow_missing: bool = False,
    evidence: bool = True,
    quiet: bool = False,
    on_version: Callable[[str, ModelVersion], None] | None = None,
    holdout: str | Texts | None = None,
    probes: str | list[Probe] | None = None,
    requested_by: str | None = None,
    identity_verification: str | None = None,
) -> dict[str, Any]:
    """`SisaStore.forget` with the selector as (kind, values), progress printed unless `quiet`,
    the result as the JSON `--json` prints."""
    res = SisaStore(cfg).forget(
        **{kind: values},
        fast=fast,
        isolate=isolate,
        relief=relief,
        queue=queue,
        dry_run=dry_run,
        allow_missing=allow_missing,
        evidence=evidence,
        holdout=holdout,
        probes=probes,
        requested_by=requested_by,
        identity_verification=identity_verification,
        on_version=on_version,
        log=request_options.progress(quiet),
    )
    return res.to_dict()


def resume(cfg: SisaConfig, quiet: bool = False) -> list[dict[str, Any]]:
    """Finish every open request from where it stopped (the text may already be gone)."""
    done = SisaStore(cfg).resume(request_options.progress(quiet))
    return [{"request_id": r.request_id, "request": r.to_dict()} for r in done]


# -- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to forget (one)")
    g.add_argument("--ids", help="comma-separated record ids")
    g.add_argument("--ids-file", help="a file with one record id per line")
    g.add_argument("--subject", help="every record of this data subject (subject_id)")
    g.add_argument("--source", help="every record ingested from this source")
    g.add_argument("--ingest-id", help="every record of this ingest batch (rolls back a bad ingest)")
    request_options.add_request_arguments(
        p,
        fast="serve an approximate (NPO) unlearned version at once, then the exact one",
        queue="record the request, serve the relief and return; `sisa process` deletes and retrains in a batch",
        dry_run="print the plan and change nothing",
        probes="probes (prompt, answer, kind paraphrase|related|locality, optional subject_id; `sisa synth --probes`): "
        "reliability, generalization, locality and leak@k of every version, kept as numbers",
    )
    p.add_argument("--allow-missing", action="store_true", help="skip unknown ids instead of failing")
    p.add_argument("--resume", action="store_true", help="finish interrupted requests")


def _selector(args: argparse.Namespace) -> tuple[str, list[str]]:
    given = [
        (k, v)
        for k, v in (
            ("ids", args.ids),
            ("ids_file", args.ids_file),
            ("subject", args.subject),
            ("source", args.source),
            ("ingest_id", args.ingest_id),
        )
        if v is not None
    ]
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
            raise ValidationError(
                f"--ids-file {value!r} is not UTF-8 text (line {line}); nothing was changed"
            ) from None
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
    res = run(
        cfg,
        kind,
        values,
        args.fast,
        args.isolate,
        args.dry_run,
        args.queue,
        False if args.no_relief else None,
        args.allow_missing,
        not args.no_evidence,
        quiet=args.json,
        holdout=args.holdout,
        probes=args.probes,
        requested_by=args.as_name,
        identity_verification=args.identity_verification,
    )
    if args.json:
        print_json(res)
        return 0
    if res.get("noop"):
        n = res.get("already_deleted") or 0
        print(f"nothing to forget: {n} already deleted by an earlier request, {res['missing']} unknown skipped; no-op")
        return 0
    request_options.print_outcome(
        res, lambda plan: f"plan: forget {plan['records']} record(s) selected by {plan['selector_kind']}"
    )
    return 0
