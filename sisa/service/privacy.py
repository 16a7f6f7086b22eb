"""The privacy team's API: file deletion requests and rectifications, follow them, fetch their
certificates, list the model versions.

A request is acknowledged (202) only once it is in the ledger with its relief version serving;
the worker (sisa/service/worker.py) carries it out in a batch. A rectification's new text lives
in its body, the staged corrections file and (after the batch) the data; errors name record ids
only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from sisa.data.opening import open_store
from sisa.forgetting import corrections, runner
from sisa.lineage import requests_ledger, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestMode, RequestStatus
from sisa.service.auth import Auditor, Filer, Reader, record_call
from sisa.service.context import context
from sisa.service.schemas import DeletionRequestIn, RectificationIn
from storage.errors import ValidationError

router = APIRouter()


@router.post("/v1/deletion-requests", status_code=202)
def file_request(body: DeletionRequestIn, request: Request, who: Filer):
    cfg, write_lock = context(request).cfg, context(request).write_lock
    selectors = (("ids", body.ids), ("subject", body.subject), ("source", body.source), ("ingest_id", body.ingest_id))
    given = {k: v for k, v in selectors if v is not None}
    if len(given) != 1:
        raise ValidationError("give exactly one of ids, subject, source, ingest_id")
    kind, value = next(iter(given.items()))
    values = list(value) if isinstance(value, list) else [value]
    st = open_store(cfg)
    mode = RequestMode.RELIEF if cfg.deletion.relief else RequestMode.EXACT
    key = body.idempotency_key
    with write_lock, st.lock("serve: file request", cfg.store.lock_timeout_s):
        res = runner.forget(st, cfg, kind, values, mode, queue=True, evidence=False, idempotency_key=key)
        current = st.current_version()
    if res.noop:
        record_call(request, "200 noop")
        noop = {"noop": True, "already_deleted": res.already_deleted, "missing": res.missing}
        return JSONResponse(noop | {"serving_version": current}, status_code=200)
    return _acknowledge(request, res, current)


@router.post("/v1/rectifications", status_code=202)
def file_rectification(body: RectificationIn, request: Request, who: Filer):
    cfg, write_lock = context(request).cfg, context(request).write_lock
    table, problems = corrections.from_rows([c.model_dump(exclude_none=True) for c in body.corrections], cfg)
    st = open_store(cfg)
    mode = RequestMode.RELIEF if cfg.deletion.relief else RequestMode.EXACT
    key = body.idempotency_key
    with write_lock, st.lock("serve: file rectification", cfg.store.lock_timeout_s):
        res = runner.rectify(st, cfg, table, problems, mode, evidence=False, queue=True, idempotency_key=key)
        current = st.current_version()
    return _acknowledge(request, res, current)


def _acknowledge(request: Request, res: runner.RequestResult, current: int | None) -> dict[str, Any]:
    req = res.request
    record_call(request, "202" + (" replayed" if res.replayed else ""), request_id=req.request_id, kind=req.kind.value)
    return {
        "request_id": req.request_id,
        "kind": req.kind.value,
        "status": req.status.value,
        "deadline": req.deadline,
        "serving_version": current,
        "replayed": res.replayed,
    }


@router.get("/v1/deletion-requests")
def list_requests(request: Request, who: Reader):
    reqs = requests_ledger.all_requests(open_store(context(request).cfg))
    record_call(request, "200")
    return [_summary(r) for r in reqs]


@router.get("/v1/deletion-requests/{request_id}")
def get_request(request_id: str, request: Request, who: Reader):
    r = requests_ledger.read_request(open_store(context(request).cfg), request_id)
    record_call(request, "200", request_id=request_id)
    return r.public_dict() | {"overdue": r.is_overdue()}


@router.get("/v1/deletion-requests/{request_id}/certificate")
def get_certificate(request_id: str, request: Request, who: Auditor):
    r = requests_ledger.read_request(open_store(context(request).cfg), request_id)
    if r.status != RequestStatus.COMPLETED:
        record_call(request, "409", request_id=request_id)
        raise HTTPException(409, f"request {request_id} is {r.status.value}; its certificate comes when it completes")
    record_call(request, "200", request_id=request_id)
    return {
        "request_id": r.request_id,
        "certificate": r.certificate,
        "evidence": r.evidence,
        "purge": r.purge,
        "versions": r.versions,
        "completed_at": r.completed_at,
    }


@router.get("/v1/versions")
def list_versions(request: Request, who: Auditor):
    st = open_store(context(request).cfg)
    record_call(request, "200")
    return {"current": st.current_version(), "versions": [v.to_dict() for v in versions.all_versions(st)]}


def _summary(r: DeletionRequest) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "kind": r.kind.value,
        "status": r.status.value,
        "mode": r.mode.value,
        "records": r.records,
        "received_at": r.received_at,
        "deadline": r.deadline,
        "overdue": r.is_overdue(),
        "versions": r.versions,
    }
