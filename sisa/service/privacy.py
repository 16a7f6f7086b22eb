"""The privacy team's API: file deletion requests and rectifications, follow them, approve or
reject them (four eyes), fetch their certificates, list the model versions.

A request is acknowledged (202) only once it is in the ledger with its relief version serving,
or, when the rule of the policy that decided it asks for approvers (the 202 names the rule),
waiting for them (`awaiting_approval`); the worker (sisa/service/worker.py) carries it out in a
batch once approved. An approver (role `approver`, never the request's requester: 403) approves
or rejects it with a reason. A rectification's new text lives in its body, the staged corrections
file and (after the batch) the data; errors name record ids only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.forgetting import RequestOptions, corrections, runner
from sisa.lineage import requests_ledger, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestMode, RequestStatus
from sisa.service.auth import Approver, Auditor, Filer, Reader, record_call
from sisa.service.context import context
from sisa.service.schemas import DeletionRequestIn, RectificationIn, RejectionIn
from sisa.storage.errors import NotFoundError, RefusedError, ValidationError
from sisa.storage.store import Store

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
    options = _queued(cfg, body.idempotency_key, runner.Filer(who.name, body.identity_verification))
    with write_lock, st.lock("serve: file request", cfg.store.lock_timeout_s):
        res = runner.forget(st, cfg, kind, values, options)
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
    options = _queued(cfg, body.idempotency_key, runner.Filer(who.name, body.identity_verification))
    with write_lock, st.lock("serve: file rectification", cfg.store.lock_timeout_s):
        res = runner.rectify(st, cfg, table, problems, options)
        current = st.current_version()
    return _acknowledge(request, res, current)


def _queued(cfg: SisaConfig, idempotency_key: str | None, filer: runner.Filer) -> RequestOptions:
    """A request filed through the service: queued for the worker's batch (which measures what
    evidence there is), its relief serving at once unless `deletion.relief` is off."""
    mode = RequestMode.RELIEF if cfg.deletion.relief else RequestMode.EXACT
    return RequestOptions(mode=mode, queue=True, evidence=False, idempotency_key=idempotency_key, filer=filer)


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
        # The rule that decided it (sisa/forgetting/policy.py) and how many approvers it waits for.
        "rule": req.decision.rule if req.decision else None,
        "policy_fingerprint": req.decision.policy_fingerprint if req.decision else None,
        "approvers_needed": req.approvers_needed,
    }


# -- four eyes: approvers decide a request awaiting approval -------------------------------------
@router.post("/v1/deletion-requests/{request_id}/approve")
def approve_request(request_id: str, request: Request, who: Approver):
    """Approve (the approver's token name is recorded); enough distinct approvers: its relief
    serves and it is queued for the worker's next batch."""
    cfg, write_lock = context(request).cfg, context(request).write_lock
    st = open_store(cfg)
    _decidable(request, st, request_id, who.name)
    with write_lock, st.lock("serve: approve", cfg.store.lock_timeout_s):
        req = runner.approve(st, cfg, request_id, who.name, evidence=False)
        current = st.current_version()
    record_call(request, f"200 {req.status.value}", request_id=request_id)
    return _decided(req, current)


@router.post("/v1/deletion-requests/{request_id}/reject")
def reject_request(request_id: str, body: RejectionIn, request: Request, who: Approver):
    """Reject with a reason: final; nothing in the store changes."""
    cfg, write_lock = context(request).cfg, context(request).write_lock
    st = open_store(cfg)
    _decidable(request, st, request_id, who.name)
    with write_lock, st.lock("serve: reject", cfg.store.lock_timeout_s):
        req = runner.reject(st, cfg, request_id, who.name, body.reason)
        current = st.current_version()
    record_call(request, "200 rejected", request_id=request_id)
    return _decided(req, current)


def _decidable(request: Request, st: Store, request_id: str, name: str) -> None:
    """404 for an unknown request, 403 for its own requester, 409 when it does not wait for
    approval (or this approver approved it already); each refusal in the audit log first."""
    try:
        runner.decidable(st, request_id, name)
    except NotFoundError as e:
        record_call(request, "404", request_id=request_id)
        raise HTTPException(404, e.message) from None
    except runner.SelfApprovalError as e:
        record_call(request, "403 own request", request_id=request_id)
        raise HTTPException(403, e.message) from None
    except RefusedError as e:
        record_call(request, "409", request_id=request_id)
        raise HTTPException(409, e.message) from None


def _decided(req: DeletionRequest, current: int | None) -> dict[str, Any]:
    return {
        "request_id": req.request_id,
        "status": req.status.value,
        "rule": req.decision.rule if req.decision else None,
        "approvers_needed": req.approvers_needed,
        "approvals": req.approvals,
        "rejection": req.rejection,
        "serving_version": current,
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
        "versions": r.versions.to_dict(),
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
        "versions": r.versions.to_dict(),
        "rule": r.decision.rule if r.decision else None,
        "approvals": f"{len(r.approvals)} of {r.approvers_needed}" if r.approvers_needed else None,
    }
