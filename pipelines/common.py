"""What every verb shares: opening the store a config names, printing tables and JSON, and the
renderings of versions, requests and certificates that more than one verb prints."""

from __future__ import annotations

import json
import sys
from typing import Any

from sisa.data import open_store
from sisa.lineage import DeletionRequest, ModelVersion

__all__ = [
    "open_store",
    "print_table",
    "print_json",
    "human_bytes",
    "print_versions",
    "print_requests",
    "print_certificate",
    "print_governance",
]


def print_table(rows: list[dict[str, Any]], columns: list[str], out=None) -> None:
    out = out or sys.stdout
    if not rows:
        out.write("(none)\n")
        return
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


# -- renderings shared by verbs (and the demo) --------------------------------------------------
def print_versions(all_versions: list[ModelVersion], current: int | None) -> None:
    rows = []
    for v in all_versions:
        flags = [
            f for f, on in (("approximate", v.approximate), (f"excludes {v.excluded_shards}", v.excluded_shards)) if on
        ]
        rows.append(
            {
                "": "*" if v.model_version == current else "",
                "version": v.model_version,
                "status": v.status.value + (f" by {v.purged_by}" if v.purged_by else ""),
                "reason": v.reason,
                "shards": len(v.shards),
                "parent": v.parent,
                "created_at": v.created_at,
                "notes": ", ".join(flags),
            }
        )
    print_table(rows, ["", "version", "status", "reason", "shards", "parent", "created_at", "notes"])


def print_requests(reqs: list[DeletionRequest]) -> None:
    rows = [
        {
            "request_id": r.request_id,
            "selector": r.selector["kind"] + (" (rectify)" if r.kind.value == "rectify" else ""),
            "records": r.records,
            "mode": r.mode.value,
            "status": r.status.value + (" OVERDUE" if r.is_overdue() else ""),
            "received_at": r.received_at[:19],
            "deadline": r.deadline[:10],
            "versions": " ".join(f"{k}={v}" for k, v in r.versions.items()),
        }
        for r in reqs
    ]
    print_table(rows, ["request_id", "selector", "records", "mode", "status", "received_at", "deadline", "versions"])


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def print_certificate(r: DeletionRequest) -> None:
    cert = r.certificate or {}
    plan = r.plan
    ev = r.evidence
    rectify = r.kind.value == "rectify"
    print(f"{'rectification' if rectify else 'deletion'} certificate — request {r.request_id}")
    print(
        f"  status            {r.status.value} (received {r.received_at}, deadline {r.deadline[:10]}, completed "
        f"{r.completed_at or '-'})"
    )
    print(f"  request sha256    {cert.get('request_sha256', '-')}")
    print(f"  selector          {r.selector['kind']} (keyed hash {r.selector['value_hash'][:16]}...)")
    print_governance(r)
    if rectify:
        print(f"  records corrected {r.records} (same ids, shards and slices); mode {r.mode.value}")
        for c in r.rectified:
            print(f"    content hash    old {c['old'][:16]}... → new {c['new'][:16]}... (keyed)")
    else:
        print(f"  records deleted   {r.records} (id hashes kept: {len(r.id_hashes)}); mode {r.mode.value}")
    if plan is not None:
        for s in plan.shards:
            print(
                f"  shard {s.shard_id:<4}        {s.records} record(s), slices hit {s.slices_hit}, retrained from "
                f"slice {s.earliest_slice}"
            )
        print(f"  unaffected shards {plan.unaffected_shards} (reused byte for byte)")
        print(f"  retrain cost      {plan.cost_fraction:.1%} of a full retrain")
    print(f"  versions          before {r.version_before}, " + ", ".join(f"{k} {v}" for k, v in r.versions.items()))
    for label, key in (("before", "checkpoints_before"), ("after", "checkpoints_after")):
        for c in cert.get(key, []):
            sha = c.get("adapter_sha256", "")
            print(
                f"  checkpoint {label:<6} shard {c['shard_id']}: {c['checkpoint_id']}"
                + (f"  adapter sha256 {sha[:16]}..." if sha else "")
            )
    lc, pc = cert.get("lineage_check", {}), cert.get("purge_check", {})
    what = "an old content hash" if rectify else "a deleted id hash"
    print(
        f"  lineage check     {'PASSED' if lc.get('passed') else 'FAILED ' + str(lc.get('violations'))}: no serving "
        f"checkpoint's lineage holds {what}"
    )
    if rectify:
        nc = cert.get("rectification", {}).get("new_content_check", {})
        print(
            f"  new content check {'PASSED' if nc.get('passed') else 'FAILED'}: the serving lineage holds every new "
            "content hash"
        )
    purge = r.purge or {}
    print(
        f"  purged            {len(purge.get('checkpoints', []))} checkpoint(s), version(s) "
        f"{purge.get('versions', [])}; purge check {'PASSED' if pc.get('passed') else 'FAILED'}"
    )
    print("  timings           " + ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items()))
    sig, head = cert.get("signature") or {}, cert.get("audit_head")
    if sig:
        print(
            f"  signed            {sig.get('signed_at')} by key {str(sig.get('key_id'))[:16]}... (ed25519; "
            "check offline with `sisa certificate verify`)"
        )
    where = f"entry #{head.get('seq')} {str(head.get('hash'))[:16]}..." if head else "-"
    print(f"  audit log head    {where} when certified (`sisa audit verify` checks it is still there)")
    unit = "answer-token" if ev.get("answer_tokens_only") else "per-token"
    print(
        f"  memorization ({unit} loss of the {'old text of the corrected' if rectify else 'deleted'} records, lower "
        "= remembered)"
    )
    print(f"    serving model before     {_num(ev.get('loss_before'))}")
    if "loss_fast_path" in ev:
        print(f"    approximate fast path    {_num(ev.get('loss_fast_path'))}")
    print(f"    after the exact {'rectification' if rectify else 'deletion'}  {_num(ev.get('loss_after'))}")
    print(f"    shards that never saw them (stranger baseline) {_num(ev.get('loss_unseen_shards'))}")
    if "holdout_before" in ev:
        print(
            f"  held-out records no model saw ({ev.get('holdout_records')}): before {_num(ev.get('holdout_before'))}"
            + (f", fast path {_num(ev.get('holdout_fast_path'))}" if "holdout_fast_path" in ev else "")
            + f", after {_num(ev.get('holdout_after'))}"
        )
    print_evidence(ev.get("versions") or {}, rectify)


def print_governance(r: DeletionRequest) -> None:
    """Which rule decided the request, who filed it and how they verified the subject, who approved
    (or rejected) it."""
    d = r.decision
    if d is not None:
        print(f"  decided by        rule `{d.rule}` of policy {d.policy} (fingerprint {d.policy_fingerprint})")
    if r.requested_by or r.identity_verification:
        print(f"  requested by      {r.requested_by or '-'}; identity verified: {r.identity_verification or '-'}")
    for a in r.approvals:
        print(f"  approved by       {a['by']} at {a['at']}")
    if r.rejection:
        print(f"  rejected by       {r.rejection['by']} at {r.rejection['at']}: {r.rejection['reason']}")


def _auc_cell(mia: dict) -> str:
    """Min-k%'s AUC with its bootstrap interval and the sample sizes (members vs holdout)."""
    if mia.get("auc") is None:
        return "-"
    ci = mia.get("auc_ci95")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{mia['auc']:.2f}{interval} ({mia['members']} vs {mia['holdout']})"


def print_evidence(by_version: dict[str, Any], rectify: bool = False) -> None:
    """The trio, leak@k and membership inference of every version a request created (--probes,
    --holdout); README.md says what each number means and what it does not prove."""
    if not by_version:
        return
    old = "old" if rectify else "forgotten"

    def pct(block: dict | None, key: str) -> str:
        if not block or block.get(key) is None:
            return "-"
        n = block.get(key.replace("recall", "n"), block.get("n"))
        return f"{block[key]:.0%} of {n}"

    rows = []
    order = ["before", "relief", "approximate", "isolate", "exact"]
    for label, v in sorted(by_version.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        rel, gen, loc, leak, mia = (
            v.get(k) or {} for k in ("reliability", "generalization", "locality", "leak_at_k", "membership")
        )
        rows.append(
            {
                "version": f"{label} (v{v.get('model_version')})",
                f"{old} recalled": pct(rel, "forbidden_recall"),
                **({"new recalled": pct(rel, "expected_recall")} if rectify else {}),
                f"paraphrase/related {old}": pct(gen, "forbidden_recall"),
                **({"paraphrase/related new": pct(gen, "expected_recall")} if rectify else {}),
                "locality unchanged": "-" if loc.get("unchanged_tokens") is None else f"{loc['unchanged_tokens']:.1%}",
                "locality recall": pct(loc, "recall"),
                "leak@k": f"{leak['samples_with_answer']}/{leak['samples']} (k={leak['k']})" if leak else "-",
                "MIA AUC [95% CI]": _auc_cell(mia),
                "privleak vs exact": "-"
                if mia.get("privleak_vs_exact") is None
                else f"{mia['privleak_vs_exact']:+.1f}%",
            }
        )
    print("  evidence per version (greedy recall of answers, leak@k sampled at temperature 1, Min-k% (40%) MIA)")
    print_table(rows, list(rows[0]))
