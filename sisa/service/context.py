"""What the routes of one app share, kept on `app.state.sisa` and read with `context(request)`.

One object rather than loose attributes, so a router names its needs by type and a test or a
second app in the same process never sees another's state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import Request

from sisa.config import SisaConfig
from sisa.service.model_cache import ModelCache
from sisa.service.tokens import TokenStore
from sisa.service.worker import Worker
from sisa.storage.audit import AuditLog


@dataclass
class ServiceContext:
    cfg: SisaConfig
    tokens: TokenStore
    audit: AuditLog
    models: ModelCache
    worker: Worker
    # One writer in this process; the store lock covers the others.
    write_lock: threading.Lock
    # Session id → token sha256: the audit page's login.
    sessions: dict[str, str] = field(default_factory=dict)


def context(request: Request) -> ServiceContext:
    return request.app.state.sisa
