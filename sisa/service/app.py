"""`sisa serve`: one HTTP app for the privacy team and the applications (FastAPI).

    privacy team   POST /v1/deletion-requests  (exactly one of ids | subject | source | ingest_id)
                   POST /v1/rectifications     (corrections: record_id + new text, optional prompt, answer)
                   GET  /v1/deletion-requests[/{id}[/certificate]]   GET /v1/versions   GET /audit
    approvers      POST /v1/deletion-requests/{id}/approve, POST /v1/deletion-requests/{id}/reject
    applications   POST /v1/completions, POST /v1/chat/completions  (OpenAI-compatible)

A request is acknowledged (202) only once it is in the ledger, with its relief version serving
(a rectification's new text staged in the store: the only place it is written before its batch
puts it in the data; never in the audit log, an error or a response); a background worker runs
batches of both kinds by the policy (`deletion.*`), one at a time under the store lock.
Completions are served from the current version: when a version commits (relief, exact,
rollback) the next request loads it; a request already running finishes on the version it
started with. Every call and every refusal goes to the append-only audit log (who, what, when,
outcome; never record text). Bearer tokens carry roles (`sisa/service/tokens.py`).

Here the app is wired: one router per audience (sisa/service/privacy.py, completions.py,
audit_page.py), who may call (auth.py), the worker (worker.py), the model cache
(model_cache.py) and what they share (context.py).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.service.audit_page import router as audit_router
from sisa.service.completions import router as completions_router
from sisa.service.context import ServiceContext, context
from sisa.service.limits import RateLimits, limited
from sisa.service.model_cache import ModelCache
from sisa.service.openai_api import OPENAI_PATHS, error_body
from sisa.service.privacy import router as privacy_router
from sisa.service.tokens import TokenStore
from sisa.service.worker import Worker
from sisa.storage.audit import AuditLog
from sisa.storage.errors import NotFoundError, SisaError, StoreLockedError, ValidationError

DESCRIPTION = (
    "Exact machine unlearning: deletion requests and rectifications with evidence, and completions "
    "from the current model version."
)


def create_app(cfg: SisaConfig, worker: bool = True) -> FastAPI:
    """The app for `cfg`'s store; `worker=False` leaves the batch worker stopped."""
    store = open_store(cfg)
    audit = AuditLog(store.fs)
    write_lock = threading.Lock()
    bg = Worker(cfg, audit, write_lock)
    ctx = ServiceContext(cfg, TokenStore(store, cfg), audit, ModelCache(cfg), bg, write_lock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.models.start()  # serving.engine: vllm: the vLLM server answers before any request
        if worker:
            bg.thread.start()
        yield
        bg.stop.set()
        # Streams still open were cut by the server's graceful-shutdown timeout: what decodes
        # is cancelled, and the decoding thread ends.
        ctx.models.close(cfg.service.shutdown_timeout_s)
        # Then the worker, and the embedded Ray it may have started (uvicorn re-raises a SIGTERM
        # once it is done, which ends the process before any exit handler could stop Ray).
        bg.close(cfg.service.shutdown_timeout_s)

    app = FastAPI(title="sisa", version="1", lifespan=lifespan, description=DESCRIPTION)
    app.state.sisa = ctx
    app.add_exception_handler(RequestValidationError, _body_error)
    app.add_exception_handler(SisaError, _sisa_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    # Per-token rate limits (sisa/service/limits.py), checked before the route's own work.
    app.state.limits = RateLimits(cfg.service)
    for router, api in ((privacy_router, "privacy"), (completions_router, "completions"), (audit_router, "privacy")):
        app.include_router(router, dependencies=[Depends(limited(api))])
    return app


def healthz(request: Request) -> dict:
    bg = context(request).worker
    return {"ok": True, "worker": bg.thread.is_alive(), "worker_error": bg.last_error}


async def _body_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default answer echoes each bad field's input: a body may carry record text.
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    if request.url.path in OPENAI_PATHS:  # the applications' clients read OpenAI's error shape
        _audit_refusal(request, "400")
        first = detail[0] if detail else {"loc": [], "msg": "invalid body"}
        param = ".".join(str(x) for x in first["loc"][1:]) or None
        return JSONResponse(error_body(f"{param or 'body'}: {first['msg']}", param=param), status_code=400)
    _audit_refusal(request, "422")
    return JSONResponse({"detail": detail}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own answer ({"detail"}), but OpenAI's error shape on the applications' routes."""
    if request.url.path in OPENAI_PATHS:
        kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
            exc.status_code, "invalid_request_error"
        )
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)
    return await http_exception_handler(request, exc)


# A SisaError's HTTP status (409 for the rest: understood, refused); an unknown request id is a 404.
_STATUS = ((ValidationError, 422), (NotFoundError, 404), (StoreLockedError, 503))


async def _sisa_error(request: Request, exc: SisaError) -> JSONResponse:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 409)
    _audit_refusal(request, str(status))
    if request.url.path in OPENAI_PATHS:
        return JSONResponse(error_body(exc.message), status_code=400 if status == 422 else status)
    return JSONResponse({"detail": exc.message}, status_code=status)


def _audit_refusal(request: Request, outcome: str) -> None:
    who = getattr(request.state, "who", None)
    context(request).audit.append(
        {"who": who.name if who else None, "what": f"{request.method} {request.url.path}", "outcome": outcome}
    )
