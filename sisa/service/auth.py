"""Who is calling: a bearer token (or the audit page's session cookie) → its token entry and role,
as FastAPI dependencies. A refusal is written to the audit log before it is answered (401: no
valid token; 403: a role that may not). Tokens and roles themselves: sisa/service/tokens.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from sisa.service.context import context
from sisa.service.tokens import TokenEntry, allowed

SESSION_COOKIE = "sisa_session"


def caller(request: Request) -> TokenEntry | None:
    """The live token entry of a bearer token, else of the audit page's session, else None."""
    ctx = context(request)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return ctx.tokens.check(header[7:].strip())
    sid = request.cookies.get(SESSION_COOKIE)
    if sid and sid in ctx.sessions:
        live = (e for e in ctx.tokens.list() if e.sha256 == ctx.sessions[sid] and e.revoked_at is None)
        return next(live, None)
    return None


def require(action: str) -> Callable[[Request], TokenEntry]:
    """A dependency that lets through a caller whose role may do `action` (tokens.PERMISSIONS)."""

    def dep(request: Request) -> TokenEntry:
        audit = context(request).audit
        who = caller(request)
        what = f"{request.method} {request.url.path}"
        if who is None:
            audit.append({"who": None, "what": what, "outcome": "401"})
            raise HTTPException(
                401, "a valid bearer token is needed (sisa token create)", headers={"WWW-Authenticate": "Bearer"}
            )
        if not allowed(who.role, action):
            audit.append({"who": who.name, "role": who.role, "what": what, "outcome": "403"})
            raise HTTPException(403, f"role {who.role!r} may not {action.replace('_', ' ')}")
        request.state.who = who
        return who

    return dep


Filer = Annotated[TokenEntry, Depends(require("file_request"))]
Reader = Annotated[TokenEntry, Depends(require("read_requests"))]
Auditor = Annotated[TokenEntry, Depends(require("read_evidence"))]
Approver = Annotated[TokenEntry, Depends(require("approve_or_reject"))]
Client = Annotated[TokenEntry, Depends(require("complete"))]


def record_call(request: Request, outcome: str, **extra: Any) -> None:
    """The audit entry of a call its caller was allowed to make (who, role, what, outcome)."""
    who = request.state.who
    entry = {"who": who.name, "role": who.role, "what": f"{request.method} {request.url.path}", "outcome": outcome}
    context(request).audit.append(entry | extra)
