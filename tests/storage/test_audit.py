"""The service's audit log (storage/audit.py): one JSON line per event, appended to the day's
file and read back newest first."""

from __future__ import annotations

import json
from pathlib import Path

from storage import layout
from storage.audit import AuditLog
from storage.fs import StoreFS


def test_events_are_appended_as_lines_and_read_newest_first(tmp_path):
    fs = StoreFS(str(tmp_path / "s"))
    log = AuditLog(fs)
    for i in range(5):
        log.append({"event": "call", "n": i})
    (day,) = sorted(Path(fs.full(layout.SERVICE_AUDIT)).iterdir())
    lines = day.read_text().splitlines()
    assert [json.loads(x)["n"] for x in lines] == [0, 1, 2, 3, 4] and day.suffix == ".jsonl"
    assert all(json.loads(x)["at"] for x in lines)
    assert [e["n"] for e in log.read()] == [4, 3, 2, 1, 0]
    assert [e["n"] for e in AuditLog(fs).read(limit=2)] == [4, 3]  # another reader, the same log
    log.append({"event": "refused"})
    assert log.read(limit=1)[0]["event"] == "refused" and len(day.read_text().splitlines()) == 6


def test_an_empty_log_reads_as_no_events(tmp_path):
    assert AuditLog(StoreFS(str(tmp_path / "s"))).read() == []
