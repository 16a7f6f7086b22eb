"""The bodies `sisa serve` accepts, as pydantic models (FastAPI validates them; a bad field is
answered 422 without its input, see sisa/service/app.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DeletionRequestIn(BaseModel):
    ids: list[str] | None = None
    subject: str | None = None
    source: str | None = None
    ingest_id: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)


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
