"""`sisa serve`: one HTTP app for the privacy team and the applications (the home of FastAPI).

    privacy team   POST /v1/deletion-requests  (exactly one of ids | subject | source | ingest_id)
                   POST /v1/rectifications     (corrections: record_id + new text, optional prompt, answer)
                   GET  /v1/deletion-requests[/{id}[/certificate]]   GET /v1/versions   GET /audit
    applications   POST /v1/completions, POST /v1/chat/completions  (OpenAI-compatible)

A request is acknowledged (202) only once it is in the ledger, with its relief version serving
(a rectification's new text staged in the store: the only place it is written before its batch
puts it in the data; never in the audit log, an error or a response); a background worker runs
batches of both kinds by the policy (`deletion.*`), one at a time under the store lock. Completions are served from the current version: when a version commits (relief, exact,
rollback) the next request loads it; a request already running finishes on the version it
started with. Every call and every refusal goes to the append-only audit log (who, what, when,
outcome; never record text). Bearer tokens carry roles (`sisa/service/tokens.py`).
"""

from __future__ import annotations

import html
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.forgetting import batches, corrections, deletion
from sisa.forgetting import flow as forgetting
from sisa.lineage import requests_ledger, versions
from sisa.lineage.requests_ledger import RequestMode, RequestStatus
from sisa.service.tokens import TokenEntry, TokenStore, allowed
from sisa.serving import engine as serving
from storage import layout
from storage.audit import AuditLog
from storage.errors import SisaError, StoreLockedError, ValidationError

SESSION_COOKIE = "sisa_session"


class DeletionRequestIn(BaseModel):
    ids: list[str] | None = None
    subject: str | None = None
    source: str | None = None
    ingest_id: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)


class CompletionIn(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    stop: str | list[str] | None = None
    seed: int = 0


class ChatMessage(BaseModel):
    role: str
    content: str


class CorrectionIn(BaseModel):
    """A correction in the format its record is stored in: `text` (optionally `prompt`, `answer`),
    `prompt` + `completion`, or `messages`."""

    record_id: str
    text: str | None = None
    prompt: str | None = None
    answer: str | None = None
    completion: str | None = None
    messages: list[ChatMessage] | None = None


class RectificationIn(BaseModel):
    corrections: list[CorrectionIn] = Field(min_length=1)
    idempotency_key: str | None = Field(default=None, max_length=200)


class ChatCompletionIn(BaseModel):
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    stop: str | list[str] | None = None
    seed: int = 0


# -- who is calling (dependencies read the app's token store and audit log) ---------------------
def _caller(request: Request) -> TokenEntry | None:
    tokens, sessions = request.app.state.tokens, request.app.state.sessions
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return tokens.check(header[7:].strip())
    sid = request.cookies.get(SESSION_COOKIE)
    if sid and sid in sessions:
        return next((e for e in tokens.list() if e.sha256 == sessions[sid] and e.revoked_at is None), None)
    return None


def _require(action: str) -> Callable[[Request], TokenEntry]:
    def dep(request: Request) -> TokenEntry:
        audit = request.app.state.audit
        who = _caller(request)
        what = f"{request.method} {request.url.path}"
        if who is None:
            audit.append({"who": None, "what": what, "outcome": "401"})
            raise HTTPException(401, "a valid bearer token is needed (sisa token create)", headers={"WWW-Authenticate": "Bearer"})
        if not allowed(who.role, action):
            audit.append({"who": who.name, "role": who.role, "what": what, "outcome": "403"})
            raise HTTPException(403, f"role {who.role!r} may not {action.replace('_', ' ')}")
        request.state.who = who
        return who

    return dep


Filer = Annotated[TokenEntry, Depends(_require("file_request"))]
Reader = Annotated[TokenEntry, Depends(_require("read_requests"))]
Auditor = Annotated[TokenEntry, Depends(_require("read_evidence"))]
Client = Annotated[TokenEntry, Depends(_require("complete"))]


class ModelCache:
    """The ensemble of the current version, reloaded when another version becomes current. A
    caller keeps the (version, ensemble) pair it got, so a running request finishes on it."""

    def __init__(self, cfg: SisaConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._loaded: tuple[int, Any] | None = None

    def current(self) -> tuple[versions.ModelVersion, Any]:
        store = open_store(self.cfg)
        v = versions.current(store)
        if v is None:
            raise HTTPException(503, "no model version serves yet: run `sisa train` first")
        with self._lock:
            if self._loaded is None or self._loaded[0] != v.model_version:
                self._loaded = (v.model_version, serving.load_ensemble(store, self.cfg, v.shards))
            return v, self._loaded[1]


class Worker:
    """Runs a batch whenever the policy says one is due, until stopped."""

    def __init__(self, cfg: SisaConfig, audit: AuditLog, write_lock: threading.Lock):
        self.cfg = cfg
        self.audit = audit
        self.write_lock = write_lock
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sisa-batch-worker", daemon=True)
        self.last_error: str | None = None

    def _loop(self) -> None:
        while not self.stop.wait(self.cfg.service.worker_interval_s):
            try:
                self.run_once()
            except Exception as e:  # the worker survives; the batch resumes on the next tick
                self.last_error = f"{type(e).__name__}: {getattr(e, 'message', '')[:200]}"
                self.audit.append({"who": "worker", "what": "process", "outcome": "error", "error": self.last_error})

    def run_once(self) -> bool:
        store = open_store(self.cfg)
        if batches.due(self.cfg, batches.queued_requests(store)) is None:
            return False
        timeout = self.cfg.store.lock_timeout_s
        with store.jobs_lock("serve: batch", timeout), self.write_lock, store.lock("serve: batch", timeout) as writer:
            waiting = batches.queued_requests(store)
            if batches.due(self.cfg, waiting) is None:
                return False
            # While the shard jobs train, requests are filed (and relieved) as at any time.
            res = batches.process(store, self.cfg, unlocked=lambda: _released(self.write_lock, writer))
        self.audit.append({"who": "worker", "what": "process", "outcome": "completed", "batch_id": res.batch_id,
                           "requests": [r.request_id for r in res.requests], "model_version": res.model_version})
        return True


@contextmanager
def _released(thread_lock: threading.Lock, writer) -> Iterator[None]:
    """Both of a batch's write locks let go for the block, taken again after in the order a
    request takes them (this process's lock, then the store's)."""
    with writer.released():
        thread_lock.release()
        try:
            yield
        finally:
            thread_lock.acquire()


def create_app(cfg: SisaConfig, worker: bool = True) -> FastAPI:
    store = open_store(cfg)
    tokens = TokenStore(store, cfg)
    audit = AuditLog(store.fs)
    models = ModelCache(cfg)
    write_lock = threading.Lock()  # one writer in this process; the store lock covers others
    sessions: dict[str, str] = {}  # session id → token sha256 (the audit page's login)
    bg = Worker(cfg, audit, write_lock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if worker:
            bg.thread.start()
        yield
        bg.stop.set()

    app = FastAPI(title="sisa", version="1", lifespan=lifespan,
                  description="Exact machine unlearning: deletion requests and rectifications with evidence, and completions from the current model version.")
    app.state.worker = bg

    app.state.tokens, app.state.audit, app.state.sessions = tokens, audit, sessions
    caller = _caller

    def log_ok(request: Request, outcome: str, **extra: Any) -> None:
        who = request.state.who
        audit.append({"who": who.name, "role": who.role, "what": f"{request.method} {request.url.path}", "outcome": outcome, **extra})

    @app.exception_handler(RequestValidationError)
    async def body_error(request: Request, exc: RequestValidationError):
        # FastAPI's default answer echoes each bad field's input: a body may carry record text.
        who = getattr(request.state, "who", None)
        audit.append({"who": who.name if who else None, "what": f"{request.method} {request.url.path}", "outcome": "422"})
        return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]}, status_code=422)

    @app.exception_handler(SisaError)
    async def sisa_error(request: Request, exc: SisaError):
        status = 422 if isinstance(exc, ValidationError) else 503 if isinstance(exc, StoreLockedError) else 409
        who = getattr(request.state, "who", None)
        audit.append({"who": who.name if who else None, "what": f"{request.method} {request.url.path}", "outcome": str(status)})
        return JSONResponse({"detail": exc.message}, status_code=status)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "worker": bg.thread.is_alive(), "worker_error": bg.last_error}

    # -- the privacy team's API ----------------------------------------------------------------
    @app.post("/v1/deletion-requests", status_code=202)
    def file_request(body: DeletionRequestIn, request: Request, who: Filer):
        given = {k: v for k, v in (("ids", body.ids), ("subject", body.subject), ("source", body.source), ("ingest_id", body.ingest_id)) if v is not None}
        if len(given) != 1:
            raise ValidationError("give exactly one of ids, subject, source, ingest_id")
        kind, value = next(iter(given.items()))
        values = list(value) if isinstance(value, list) else [value]
        st = open_store(cfg)
        mode = RequestMode.RELIEF if cfg.deletion.relief else RequestMode.EXACT
        with write_lock, st.lock("serve: file request", cfg.store.lock_timeout_s):
            res = forgetting.forget(st, cfg, kind, values, mode, queue=True, evidence=False, idempotency_key=body.idempotency_key)
            current = st.current_version()
        if res.noop:
            log_ok(request, "200 noop")
            return JSONResponse({"noop": True, "already_deleted": res.already_deleted, "missing": res.missing, "serving_version": current}, status_code=200)
        return _acknowledge(request, res, current)

    @app.post("/v1/rectifications", status_code=202)
    def file_rectification(body: RectificationIn, request: Request, who: Filer):
        # The new text lives in this body, the staged corrections file and (after the batch) the
        # data; errors name record ids only.
        table, problems = corrections.from_rows([c.model_dump(exclude_none=True) for c in body.corrections], cfg)
        st = open_store(cfg)
        mode = RequestMode.RELIEF if cfg.deletion.relief else RequestMode.EXACT
        with write_lock, st.lock("serve: file rectification", cfg.store.lock_timeout_s):
            res = forgetting.rectify(st, cfg, table, problems, mode, evidence=False, queue=True, idempotency_key=body.idempotency_key)
            current = st.current_version()
        return _acknowledge(request, res, current)

    def _acknowledge(request: Request, res: forgetting.ForgetResult, current: int | None) -> dict[str, Any]:
        req = res.request
        log_ok(request, "202" + (" replayed" if res.replayed else ""), request_id=req.request_id, kind=req.kind.value)
        return {"request_id": req.request_id, "kind": req.kind.value, "status": req.status.value, "deadline": req.deadline, "serving_version": current, "replayed": res.replayed}

    @app.get("/v1/deletion-requests")
    def list_requests(request: Request, who: Reader):
        reqs = requests_ledger.all_requests(open_store(cfg))
        log_ok(request, "200")
        return [_summary(r) for r in reqs]

    @app.get("/v1/deletion-requests/{request_id}")
    def get_request(request_id: str, request: Request, who: Reader):
        r = requests_ledger.read_request(open_store(cfg), request_id)
        log_ok(request, "200", request_id=request_id)
        return r.public_dict() | {"overdue": r.is_overdue()}

    @app.get("/v1/deletion-requests/{request_id}/certificate")
    def get_certificate(request_id: str, request: Request, who: Auditor):
        r = requests_ledger.read_request(open_store(cfg), request_id)
        if r.status != RequestStatus.COMPLETED:
            log_ok(request, "409", request_id=request_id)
            raise HTTPException(409, f"request {request_id} is {r.status.value}; its certificate comes when it completes")
        log_ok(request, "200", request_id=request_id)
        return {"request_id": r.request_id, "certificate": r.certificate, "evidence": r.evidence, "purge": r.purge, "versions": r.versions, "completed_at": r.completed_at}

    @app.get("/v1/versions")
    def list_versions(request: Request, who: Auditor):
        st = open_store(cfg)
        log_ok(request, "200")
        return {"current": st.current_version(), "versions": [v.to_dict() for v in versions.all_versions(st)]}

    # -- the applications' API -----------------------------------------------------------------
    def _complete(
        prompts: list[str], max_tokens: int, temperature: float, stop: str | list[str] | None, seed: int, add_special_tokens: bool = True
    ) -> tuple[versions.ModelVersion, list[tuple[str, str]]]:
        if max_tokens > cfg.service.max_tokens:
            raise ValidationError(f"max_tokens should be <= {cfg.service.max_tokens} (service.max_tokens), got {max_tokens}")
        v, ens = models.current()
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        out = []
        for p in prompts:
            text = serving.generate_text(ens, p, max_tokens, temperature == 0, temperature or 1.0, seed, add_special_tokens=add_special_tokens)
            cut = min((text.index(s) for s in stops if s and s in text), default=None)
            out.append((text if cut is None else text[:cut], "stop" if cut is not None else "length"))
        return v, out

    def _model_name(v: versions.ModelVersion) -> str:
        return f"{cfg.tracking.registered_model}@v{v.model_version}"

    @app.post("/v1/completions")
    def completions(body: CompletionIn, request: Request, who: Client):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        v, outs = _complete(prompts, body.max_tokens, body.temperature, body.stop, body.seed)
        log_ok(request, "200", model_version=v.model_version, prompts=len(prompts))
        return {
            "id": f"cmpl-{secrets.token_hex(8)}", "object": "text_completion", "created": int(time.time()), "model": _model_name(v),
            "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None} for i, (t, f) in enumerate(outs)],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatCompletionIn, request: Request, who: Client):
        _, ens = models.current()
        template = getattr(ens.tokenizer, "chat_template", None)
        if not template:
            log_ok(request, "400 no chat template")
            raise HTTPException(400, f"the base model {cfg.model.name!r} has no chat template; use /v1/completions")
        prompt = ens.tokenizer.apply_chat_template([m.model_dump() for m in body.messages], tokenize=False, add_generation_prompt=True)
        # The template writes its own bos, as in training: no second one.
        v, ((text, finish),) = _complete([prompt], body.max_tokens, body.temperature, body.stop, body.seed, add_special_tokens=False)
        log_ok(request, "200", model_version=v.model_version)
        return {
            "id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion", "created": int(time.time()), "model": _model_name(v),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    # -- the audit page ------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form() -> str:
        return _page("sign in", '<form method="post" action="/login"><label>token <input type="password" name="token" autocomplete="off"></label> <button>sign in</button></form>')

    @app.post("/login")
    async def login(request: Request):
        # A plain urlencoded form, read without python-multipart.
        token = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0]
        entry = tokens.check(token)
        if entry is None or not allowed(entry.role, "read_evidence"):
            audit.append({"who": entry.name if entry else None, "what": "POST /login", "outcome": "401" if entry is None else "403"})
            return HTMLResponse(_page("sign in", "<p class=bad>that token may not open the audit page</p>"), status_code=401 if entry is None else 403)
        sid = secrets.token_urlsafe(32)
        sessions[sid] = entry.sha256
        audit.append({"who": entry.name, "role": entry.role, "what": "POST /login", "outcome": "200"})
        resp = RedirectResponse("/audit", status_code=303)
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict")
        return resp

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request):
        who = caller(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        if not allowed(who.role, "read_evidence"):
            audit.append({"who": who.name, "role": who.role, "what": "GET /audit", "outcome": "403"})
            raise HTTPException(403, f"role {who.role!r} may not read the audit page")
        audit.append({"who": who.name, "role": who.role, "what": "GET /audit", "outcome": "200"})
        return _audit_html(cfg, audit)

    @app.get("/audit/reports/{name}")
    def report_plot(name: str, request: Request):
        """A plot of the latest report (`sisa demo` writes them under the store's reports/)."""
        who = caller(request)
        if who is None:
            raise HTTPException(401, "sign in at /login, or send a bearer token")
        if not allowed(who.role, "read_evidence"):
            audit.append({"who": who.name, "role": who.role, "what": "GET /audit/reports", "outcome": "403"})
            raise HTTPException(403, f"role {who.role!r} may not read the audit page")
        if name not in _report_plots(open_store(cfg)):
            raise HTTPException(404, "no such plot in the latest report")
        audit.append({"who": who.name, "role": who.role, "what": f"GET /audit/reports/{name}", "outcome": "200"})
        return Response(open_store(cfg).fs.read_bytes(f"{layout.REPORTS}/{name}"), media_type="image/png")

    return app


def _summary(r) -> dict[str, Any]:
    return {"request_id": r.request_id, "kind": r.kind.value, "status": r.status.value, "mode": r.mode.value, "records": r.records,
            "received_at": r.received_at, "deadline": r.deadline, "overdue": r.is_overdue(), "versions": r.versions}


_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1b1f24}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}th,td{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left}
th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}code{font-size:12px}h1{font-size:1.4rem}"""


def _page(title: str, body: str) -> str:
    return f"<!doctype html><html><head><meta charset=utf-8><title>sisa — {html.escape(title)}</title><style>{_STYLE}</style></head><body><h1>sisa — {html.escape(title)}</h1>{body}</body></html>"


def _audit_html(cfg: SisaConfig, audit: AuditLog) -> str:
    store = open_store(cfg)
    current = versions.current(store)
    reqs = requests_ledger.all_requests(store)
    hashes = set().union(*(set(r.id_hashes) for r in reqs)) if reqs else set()
    violations = deletion.lineage_violations(store, current.shards, hashes) if current else []
    esc = html.escape
    rows = "".join(
        f"<tr><td><code>{esc(r.request_id)}</code></td><td>{esc(r.status.value)}</td><td>{esc(r.mode.value)}</td><td>{r.records}</td>"
        f"<td>{esc(r.deadline[:10])}</td><td class={'bad' if r.is_overdue() else 'ok'}>{'OVERDUE' if r.is_overdue() else 'on time'}</td>"
        f"<td>{esc(' '.join(f'{k}={v}' for k, v in r.versions.items()))}</td>"
        f"<td>{_cert_cell(r)}</td></tr>"
        for r in reversed(reqs)
    )
    lineage = "<span class=ok>passed: no serving checkpoint holds a deleted record</span>" if not violations else f"<span class=bad>FAILED: {esc(', '.join(violations))}</span>"
    events = "".join(
        f"<tr><td>{esc(e.get('at', ''))}</td><td>{esc(str(e.get('who')))}</td><td>{esc(str(e.get('what')))}</td><td>{esc(str(e.get('outcome')))}</td></tr>"
        for e in audit.read(50)
    )
    plots = "".join(f'<p><img src="/audit/reports/{esc(n)}" alt="{esc(n)}" style="max-width:100%"></p>' for n in _report_plots(store))
    plots = f"<h2>latest report</h2>{plots}" if plots else ""
    serving_line = f"version {current.model_version} ({esc(current.reason)}, {len(current.shards)} shard(s), {esc(current.aggregation)})" if current else "none yet"
    body = (
        f"<p>serving: <b>{serving_line}</b>; lineage check {lineage}</p>"
        f"<h2>deletion requests</h2><table><tr><th>request</th><th>status</th><th>mode</th><th>records</th><th>deadline</th><th></th><th>versions</th><th>certificate</th></tr>{rows}</table>"
        f"{plots}<h2>latest calls</h2><table><tr><th>at</th><th>who</th><th>what</th><th>outcome</th></tr>{events}</table>"
        f"<p>generated {datetime.now(UTC).isoformat(timespec='seconds')}</p>"
    )
    return _page("audit", body)


def _report_plots(store) -> list[str]:
    """PNG files of the latest report (plain names only: nothing outside reports/ is served)."""
    names = [i.path.rsplit("/", 1)[-1] for i in store.fs.list(layout.REPORTS)]
    return sorted(n for n in names if _PLOT_NAME.fullmatch(n))


_PLOT_NAME = re.compile(r"[A-Za-z0-9_.-]+\.png")


def _cert_cell(r) -> str:
    cert = r.certificate or {}
    if not cert:
        return "-"
    lc, pc = cert.get("lineage_check", {}), cert.get("purge_check", {})
    ok = lc.get("passed") and pc.get("passed")
    return f"<span class={'ok' if ok else 'bad'}>lineage {'ok' if lc.get('passed') else 'FAILED'}, purge {'ok' if pc.get('passed') else 'FAILED'}</span> <code>{html.escape(cert.get('request_sha256', '')[:16])}</code>"
