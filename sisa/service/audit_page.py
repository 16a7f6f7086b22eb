"""The audit page for auditors in a browser: GET /login and POST /login (a token in a form → an
httponly session cookie), GET /audit (the page, sisa/service/page.py) and the latest report's plots.
A caller without a session is sent to /login; every refusal and every view is in the audit log."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sisa.data.opening import open_store
from sisa.service.auth import SESSION_COOKIE, caller
from sisa.service.context import context
from sisa.service.page import audit_html, login_html, report_plots
from sisa.service.tokens import allowed
from sisa.storage import layout

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form() -> str:
    return login_html()


@router.post("/login")
async def login(request: Request):
    ctx = context(request)
    # A plain urlencoded form, read without python-multipart.
    token = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0]
    entry = ctx.tokens.check(token)
    if entry is None or not allowed(entry.role, "read_evidence"):
        status = 401 if entry is None else 403
        ctx.audit.append({"who": entry.name if entry else None, "what": "POST /login", "outcome": str(status)})
        return HTMLResponse(login_html("that token may not open the audit page"), status_code=status)
    sid = secrets.token_urlsafe(32)
    ctx.sessions[sid] = entry.sha256
    ctx.audit.append({"who": entry.name, "role": entry.role, "what": "POST /login", "outcome": "200"})
    resp = RedirectResponse("/audit", status_code=303)
    resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict")
    return resp


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request):
    ctx = context(request)
    who = caller(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    if not allowed(who.role, "read_evidence"):
        ctx.audit.append({"who": who.name, "role": who.role, "what": "GET /audit", "outcome": "403"})
        raise HTTPException(403, f"role {who.role!r} may not read the audit page")
    ctx.audit.append({"who": who.name, "role": who.role, "what": "GET /audit", "outcome": "200"})
    return audit_html(ctx.cfg, ctx.audit)


@router.get("/audit/reports/{name}")
def report_plot(name: str, request: Request):
    """A plot of the latest report (`sisa demo` writes them under the store's reports/)."""
    ctx = context(request)
    who = caller(request)
    if who is None:
        raise HTTPException(401, "sign in at /login, or send a bearer token")
    if not allowed(who.role, "read_evidence"):
        ctx.audit.append({"who": who.name, "role": who.role, "what": "GET /audit/reports", "outcome": "403"})
        raise HTTPException(403, f"role {who.role!r} may not read the audit page")
    if name not in report_plots(open_store(ctx.cfg)):
        raise HTTPException(404, "no such plot in the latest report")
    ctx.audit.append({"who": who.name, "role": who.role, "what": f"GET /audit/reports/{name}", "outcome": "200"})
    return Response(open_store(ctx.cfg).fs.read_bytes(f"{layout.REPORTS}/{name}"), media_type="image/png")
