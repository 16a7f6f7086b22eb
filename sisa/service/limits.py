"""Per-token rate limits of `sisa serve`: one token bucket per (token, API), a refusal answered 429
with `Retry-After` (whole seconds until the bucket holds a call again) and written to the audit log.

Two APIs, each with its own rate: the privacy API and the audit page
(`service.rate_limit_privacy_per_min`) and the applications' completions API
(`service.rate_limit_completions_per_min`); 0 turns a limit off. A token may send
`service.rate_limit_burst` calls at once before its rate applies. A call without a valid token is
not counted here: the route answers it 401. The buckets live in this process (one app, one
uvicorn worker, as `sisa serve` runs it) and start full again after a restart.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from fastapi import HTTPException, Request

from sisa.config import ServiceConfig
from sisa.service.auth import caller
from sisa.service.context import context

APIS = ("privacy", "completions")


class RateLimits:
    """Token buckets keyed by (api, token sha256); thread-safe (sync routes run in a pool)."""

    def __init__(self, cfg: ServiceConfig, clock: Callable[[], float] = time.monotonic):
        self.per_min = {"privacy": cfg.rate_limit_privacy_per_min, "completions": cfg.rate_limit_completions_per_min}
        self.burst = float(cfg.rate_limit_burst)
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key → (calls held, when)

    def take(self, api: str, key: str) -> float:
        """0 when the call may go ahead (and is counted), else the seconds until it may."""
        per_min = self.per_min[api]
        if per_min <= 0:
            return 0.0
        rate = per_min / 60.0
        with self._lock:
            now = self.clock()
            held, when = self._buckets.get((api, key), (self.burst, now))
            held = min(self.burst, held + (now - when) * rate)
            if held >= 1.0:
                self._buckets[(api, key)] = (held - 1.0, now)
                return 0.0
            self._buckets[(api, key)] = (held, now)
            return (1.0 - held) / rate


def limited(api: str) -> Callable[[Request], None]:
    """A dependency (for a whole router) that refuses a token's call over its API's rate."""
    assert api in APIS, api

    def dep(request: Request) -> None:
        who = caller(request)
        if who is None:
            return
        wait = request.app.state.limits.take(api, who.sha256)
        if wait <= 0:
            return
        retry = max(1, math.ceil(wait))
        what = f"{request.method} {request.url.path}"
        context(request).audit.append({"who": who.name, "role": who.role, "what": what, "outcome": "429"})
        raise HTTPException(
            429,
            f"token {who.name!r} is over its rate on the {api} API (service.rate_limit_{api}_per_min, "
            f"service.rate_limit_burst); retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )

    return dep
