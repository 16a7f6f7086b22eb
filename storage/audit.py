"""The service's append-only audit log: one JSON line per call or refusal, never record text.

Local stores append to one file per UTC day (`service/audit/YYYY-MM-DD.jsonl`, opened in append
mode, flushed and fsynced per line, so a killed server loses no written line). Object stores
have no append: there each event is its own small object under the same folder.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from storage import layout
from storage.fs import StoreFS


class AuditLog:
    def __init__(self, fs: StoreFS):
        self.fs = fs
        self._lock = threading.Lock()

    def append(self, event: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        line = json.dumps({"at": now.isoformat(timespec="milliseconds"), **event}, sort_keys=True) + "\n"
        if self.fs.is_local:
            folder = self.fs.full(layout.SERVICE_AUDIT)
            os.makedirs(folder, exist_ok=True)
            with self._lock, open(os.path.join(folder, f"{now:%Y-%m-%d}.jsonl"), "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        else:
            self.fs.write_bytes(
                f"{layout.SERVICE_AUDIT}/{now:%Y-%m-%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.jsonl", line.encode()
            )

    def read(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first."""
        events: list[dict[str, Any]] = []
        for info in reversed(self.fs.list(layout.SERVICE_AUDIT)):
            lines = self.fs.read_bytes(self.fs.rel(info.path)).decode("utf-8").splitlines()
            events.extend(json.loads(x) for x in reversed(lines) if x.strip())
            if len(events) >= limit:
                break
        return events[:limit]
