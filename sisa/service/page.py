"""The audit page's HTML: what serves, whether the lineage check passes, every request with its
deadline and certificate checks, the latest report's plots and the latest calls. Every value is
escaped; no record text is on the page (requests show ids, counts and digests only)."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.forgetting import lineage_check
from sisa.lineage import requests_ledger, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestStatus
from sisa.storage import layout
from sisa.storage.audit import AuditLog
from sisa.storage.store import Store

_STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1b1f24}\n"
    "table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}"
    "th,td{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left}\n"
    "th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}"
    "code{font-size:12px}h1{font-size:1.4rem}"
)
_COLUMNS = ("request", "status", "mode", "records", "deadline", "", "versions", "certificate")
_PLOT_NAME = re.compile(r"[A-Za-z0-9_.-]+\.png")
esc = html.escape


def page(title: str, body: str) -> str:
    head = f"<meta charset=utf-8><title>sisa — {esc(title)}</title><style>{_STYLE}</style>"
    return f"<!doctype html><html><head>{head}</head><body><h1>sisa — {esc(title)}</h1>{body}</body></html>"


def login_html(message: str | None = None) -> str:
    """The sign-in form, or (after a refused token) the reason."""
    if message is not None:
        return page("sign in", f"<p class=bad>{esc(message)}</p>")
    form = (
        '<form method="post" action="/login"><label>token <input type="password" name="token" autocomplete="off">'
        "</label> <button>sign in</button></form>"
    )
    return page("sign in", form)


def audit_html(cfg: SisaConfig, audit: AuditLog) -> str:
    store = open_store(cfg)
    current = versions.current(store)
    reqs = requests_ledger.all_requests(store)
    # A request awaiting approval, or rejected, forgets nothing (yet): what serves may hold its records.
    undecided = (RequestStatus.AWAITING_APPROVAL, RequestStatus.REJECTED)
    hashes = set().union(*(set(r.id_hashes) for r in reqs if r.status not in undecided)) if reqs else set()
    violations = lineage_check.lineage_violations(store, current.shards, hashes) if current else []
    rows = "".join(_request_row(r) for r in reversed(reqs))
    if not violations:
        lineage = "<span class=ok>passed: no serving checkpoint holds a deleted record</span>"
    else:
        lineage = f"<span class=bad>FAILED: {esc(', '.join(violations))}</span>"
    events = "".join(
        f"<tr><td>{esc(e.get('at', ''))}</td><td>{esc(str(e.get('who')))}</td><td>{esc(str(e.get('what')))}</td>"
        f"<td>{esc(str(e.get('outcome')))}</td></tr>"
        for e in audit.read(50)
    )
    plots = "".join(
        f'<p><img src="/audit/reports/{esc(n)}" alt="{esc(n)}" style="max-width:100%"></p>' for n in report_plots(store)
    )
    plots = f"<h2>latest report</h2>{plots}" if plots else ""
    serving_line = "none yet"
    if current:
        serving_line = (
            f"version {current.model_version} ({esc(current.reason)}, {len(current.shards)} shard(s), "
            f"{esc(current.aggregation)})"
        )
    heads = "".join(f"<th>{h}</th>" for h in _COLUMNS)
    body = (
        f"<p>serving: <b>{serving_line}</b>; lineage check {lineage}</p>"
        f"{_waiting_html(reqs)}"
        f"<h2>deletion requests</h2><table><tr>{heads}</tr>{rows}</table>"
        f"{plots}<h2>latest calls</h2>"
        f"<table><tr><th>at</th><th>who</th><th>what</th><th>outcome</th></tr>{events}</table>"
        f"<p>generated {datetime.now(UTC).isoformat(timespec='seconds')}</p>"
    )
    return page("audit", body)


_WAITING = ("request", "kind", "rule", "approvals", "requested by", "waiting", "deadline", "")


def _waiting_html(reqs: list[DeletionRequest], now: datetime | None = None) -> str:
    """What waits for approvers (four eyes), the longest waiting first: how long it has waited and
    how long is left before its deadline."""
    now = now or datetime.now(UTC)
    waiting = sorted((r for r in reqs if r.status == RequestStatus.AWAITING_APPROVAL), key=lambda r: r.received_at)
    if not waiting:
        return "<h2>awaiting approval</h2><p>nothing waits for an approver</p>"
    rows = []
    for r in waiting:
        waited = (now - datetime.fromisoformat(r.received_at)).total_seconds() / 3600
        left = (datetime.fromisoformat(r.deadline) - now).total_seconds() / 86400
        overdue = left < 0
        rows.append(
            f"<tr><td><code>{esc(r.request_id)}</code></td><td>{esc(r.kind.value)}</td>"
            f"<td>{esc(r.decision.rule if r.decision else '-')}</td>"
            f"<td>{len(r.approvals)} of {r.approvers_needed}</td><td>{esc(r.requested_by or '-')}</td>"
            f"<td>{waited:.1f} h</td><td>{esc(r.deadline[:10])}</td>"
            f"<td class={'bad' if overdue else 'ok'}>"
            f"{'OVERDUE' if overdue else f'{left:.1f} days left'}</td></tr>"
        )
    heads = "".join(f"<th>{h}</th>" for h in _WAITING)
    return f"<h2>awaiting approval ({len(waiting)})</h2><table><tr>{heads}</tr>{''.join(rows)}</table>"


def report_plots(store: Store) -> list[str]:
    """PNG files of the latest report (plain names only: nothing outside reports/ is served)."""
    names = [i.path.rsplit("/", 1)[-1] for i in store.fs.list(layout.REPORTS)]
    return sorted(n for n in names if _PLOT_NAME.fullmatch(n))


def _request_row(r: DeletionRequest) -> str:
    overdue = r.is_overdue()
    return (
        f"<tr><td><code>{esc(r.request_id)}</code></td><td>{esc(r.status.value)}</td><td>{esc(r.mode.value)}</td>"
        f"<td>{r.records}</td><td>{esc(r.deadline[:10])}</td>"
        f"<td class={'bad' if overdue else 'ok'}>{'OVERDUE' if overdue else 'on time'}</td>"
        f"<td>{esc(' '.join(f'{k}={v}' for k, v in r.versions.items()))}</td>"
        f"<td>{_cert_cell(r)}</td></tr>"
    )


def _cert_cell(r: DeletionRequest) -> str:
    cert = r.certificate or {}
    if not cert:
        return "-"
    lc, pc = cert.get("lineage_check", {}), cert.get("purge_check", {})
    ok = lc.get("passed") and pc.get("passed")
    checks = f"lineage {'ok' if lc.get('passed') else 'FAILED'}, purge {'ok' if pc.get('passed') else 'FAILED'}"
    digest = esc(cert.get("request_sha256", "")[:16])
    return f"<span class={'ok' if ok else 'bad'}>{checks}</span> <code>{digest}</code>"
