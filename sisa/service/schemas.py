"""The bodies `sisa serve` accepts, as pydantic models (FastAPI validates them; a bad field is
answered 422 without its input, see sisa/service/app.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sisa.lineage.requests_ledger import IDENTITY_VERIFICATION_MAX


def _identity_verification() -> Any:
    """The requester's attestation of how the data subject's identity was verified: how, never whose."""
    return Field(default=None, min_length=1, max_length=IDENTITY_VERIFICATION_MAX)


class DeletionRequestIn(BaseModel):
    ids: list[str] | None = None
    subject: str | None = None
    source: str | None = None
    ingest_id: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)
    identity_verification: str | None = _identity_verification()


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
    identity_verification: str | None = _identity_verification()


class RejectionIn(BaseModel):
    reason: str = Field(min_length=1, max_length=IDENTITY_VERIFICATION_MAX)
