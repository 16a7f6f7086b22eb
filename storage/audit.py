"""The service's append-only audit log: one JSON line per call or refusal, never record text.

Local stores append to one file per UTC day (`service/audit/YYYY-MM-DD.jsonl`, opened in append
mode, flushed and fsynced per line, so a killed server loses no written line). Object stores
have no append: there each event is its own small object under the same folder.

The log is a hash chain, so an edit, a removal or a reordering shows (`verify_chain`). Each entry
carries `seq` (its place: 0, 1, ... across days), `prev` (the hash of the entry before it;
`GENESIS` for the first) and `hash`, the sha256 of its canonical JSON (sorted keys, no
whitespace) without `hash`: that covers `prev`, so each entry vouches for all before it. Anyone
who can write the file can rebuild a whole consistent chain, so the chain is anchored from
outside: every signed certificate records the head (`seq` and `hash` of the last entry) when it
was signed, and `verify_chain` checks each recorded head is still in the chain; a tail cut off
after a certificate recorded it shows too. Lines written before the chain existed (no `seq`)
are legacy: the chain starts at the first new entry, and `verify_chain` counts the legacy lines
before it (a legacy-looking line after the chain began is a break).

Appends are serialised by a thread lock (the service's routes and its worker share one
`AuditLog`) and, on a local store, by `flock` on `service/AUDIT.LOCK`, so two processes never
fork the chain. On an object store the head is remembered per process: one writer there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sisa.storage import layout
from sisa.storage.fs import StoreFS

GENESIS = hashlib.sha256(b"sisa audit log genesis").hexdigest()
_TAIL_BYTES = 64 * 1024


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON without its own `hash` (so with `prev`)."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _torn(f) -> bool:
    """Whether the file's last line lacks its newline (a crash cut it short): the next line then
    starts on a line of its own, and `verify_chain` names the torn one."""
    if os.fstat(f.fileno()).st_size == 0:
        return False
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


def _chained(entry: Any) -> bool:
    return isinstance(entry, dict) and {"seq", "prev", "hash"} <= set(entry)


class AuditLog:
    def __init__(self, fs: StoreFS):
        self.fs = fs
        self._lock = threading.Lock()
        # (newest file, its size) → (next seq, prev hash): no re-read while nobody else appended.
        self._cached: tuple[tuple[str, int] | None, tuple[int, str]] | None = None

    def append(self, event: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        with self._lock, self._file_lock():
            seq, prev = self._next()
            entry = {"at": now.isoformat(timespec="milliseconds"), **event, "seq": seq, "prev": prev}
            entry["hash"] = entry_hash(entry)
            line = json.dumps(entry, sort_keys=True) + "\n"
            if self.fs.is_local:
                path = os.path.join(self.fs.full(layout.SERVICE_AUDIT), f"{now:%Y-%m-%d}.jsonl")
                with open(path, "a+b") as f:
                    f.write((("\n" if _torn(f) else "") + line).encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
                    size = f.tell()
                self._cached = ((path, size), (seq + 1, entry["hash"]))
            else:
                name = f"{layout.SERVICE_AUDIT}/{now:%Y-%m-%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.jsonl"
                self.fs.write_bytes(name, line.encode())
                self._cached = (None, (seq + 1, entry["hash"]))

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        if not self.fs.is_local:
            yield
            return
        os.makedirs(self.fs.full(layout.SERVICE_AUDIT), exist_ok=True)
        fd = os.open(self.fs.full(layout.SERVICE_AUDIT_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _next(self) -> tuple[int, str]:
        """(seq, prev) of the next entry: after the last chained entry, or the chain's start."""
        if not self.fs.is_local:
            if self._cached is None:
                self._cached = (None, self._scan_back(self.fs.list(layout.SERVICE_AUDIT)))
            return self._cached[1]
        files = [i for i in self.fs.list(layout.SERVICE_AUDIT) if i.size]
        newest = (files[-1].path, files[-1].size) if files else None
        if self._cached is None or self._cached[0] != newest:
            self._cached = (newest, self._scan_back(files))
        return self._cached[1]

    def _scan_back(self, files: list) -> tuple[int, str]:
        for info in reversed(files):
            data = self._tail(info)
            for text in reversed(data.splitlines()):
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if _chained(entry) and isinstance(entry["seq"], int):
                    return entry["seq"] + 1, entry["hash"]
        return 0, GENESIS

    def _tail(self, info) -> bytes:
        """The file's last lines (a whole file when small or on an object store)."""
        if not self.fs.is_local or info.size <= _TAIL_BYTES:
            return self.fs.read_bytes(self.fs.rel(info.path))
        with open(info.path, "rb") as f:
            f.seek(-_TAIL_BYTES, os.SEEK_END)
            data = f.read()
        return data[data.find(b"\n") + 1 :]  # the first line is likely cut

    def head(self) -> dict[str, Any] | None:
        """The last chained entry's place and hash (what a certificate records), None before the first."""
        if not self.fs.exists(layout.SERVICE_AUDIT):
            return None  # no service ever wrote here: create nothing
        with self._lock, self._file_lock():
            self._cached = None  # another process may have appended
            seq, prev = self._next()
        return None if seq == 0 else {"seq": seq - 1, "hash": prev}

    def read(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first (a line that is not JSON is skipped here;
        `verify_chain` names it)."""
        events: list[dict[str, Any]] = []
        for info in reversed(self.fs.list(layout.SERVICE_AUDIT)):
            lines = self.fs.read_bytes(self.fs.rel(info.path)).decode("utf-8", "replace").splitlines()
            for x in reversed(lines):
                try:
                    events.append(json.loads(x))
                except ValueError:
                    continue
            if len(events) >= limit:
                break
        return events[:limit]


# -- verification ---------------------------------------------------------------------------------
@dataclass
class ChainReport:
    """What `verify_chain` found: `problem` is the first break (None: intact), `where` its line,
    `entries` how many chained entries hold up to there."""

    entries: int = 0
    legacy: int = 0
    head: dict[str, Any] | None = None
    heads_checked: int = 0
    problem: str | None = None
    where: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _lines(fs: StoreFS) -> Iterator[tuple[str, str]]:
    """(`file:line`, text) of every non-blank line, oldest first."""
    for info in fs.list(layout.SERVICE_AUDIT):
        name = info.path.rsplit("/", 1)[-1]
        text = fs.read_bytes(fs.rel(info.path)).decode("utf-8", "replace")
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield f"{name}:{n}", line


def _check_entry(entry: Any, where: str, expected: int, prev: str, prev_where: str | None, places) -> str | None:
    """Why this entry breaks the chain at this place, or None (`places`: seq → where, of every line)."""
    if not _chained(entry):
        return f"{where} has no chain fields although the chain began before it: inserted, or its fields removed"
    seq = entry["seq"]
    if entry_hash(entry) != entry["hash"]:
        return f"entry #{seq} ({where}) was changed: its content no longer matches its hash"
    if not isinstance(seq, int) or seq < expected:
        return f"entry #{seq} ({where}) is out of order: it came before, entry #{expected} should be here (reordered)"
    if seq > expected:
        if expected in places:
            return f"entry #{seq} ({where}) is out of order: entry #{expected} belongs here, not at {places[expected]}"
        gone = f"#{expected}" if seq == expected + 1 else f"#{expected}..#{seq - 1}"
        return f"entry {gone} was removed: it is missing before {where}"
    if entry["prev"] != prev:
        after = f"entry #{seq - 1} ({prev_where})" if prev_where else "the chain's start"
        return f"entry #{seq} ({where}) does not chain from {after}: one of them was rewritten"
    return None


def _parse(fs: StoreFS) -> tuple[list[tuple[str, Any]], dict[Any, str]]:
    """Every line parsed (None where it is not JSON), and where each `seq` first stands."""
    parsed: list[tuple[str, Any]] = []
    places: dict[Any, str] = {}
    for where, text in _lines(fs):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        parsed.append((where, entry))
        if _chained(entry) and isinstance(entry["seq"], int):
            places.setdefault(entry["seq"], where)
    return parsed, places


def verify_chain(fs: StoreFS, heads: list[tuple[str, dict[str, Any]]] = ()) -> ChainReport:
    """Walk the chain from the first entry and stop at the first break; then check that each
    recorded head (`(what recorded it, {"seq", "hash"})`, from signed certificates) is in it."""
    report = ChainReport()
    hashes: dict[int, tuple[str, str]] = {}
    prev, prev_where = GENESIS, None
    parsed, places = _parse(fs)
    for where, entry in parsed:
        if not isinstance(entry, dict):
            report.problem, report.where = f"{where} is not a JSON object: edited or cut short", where
            report.entries = len(hashes)
            return report
        if not hashes and not _chained(entry):
            report.legacy += 1
            continue
        problem = _check_entry(entry, where, len(hashes), prev, prev_where, places)
        if problem:
            report.problem, report.where, report.entries = problem, where, len(hashes)
            return report
        prev, prev_where = entry["hash"], where
        hashes[entry["seq"]] = (entry["hash"], where)
    report.entries = len(hashes)
    if hashes:
        report.head = {"seq": len(hashes) - 1, "hash": prev}
    for who, head in heads:
        report.heads_checked += 1
        problem = _check_head(who, head, hashes)
        if problem:
            report.problem = problem
            return report
    return report


def _check_head(who: str, head: dict[str, Any], hashes: dict[int, tuple[str, str]]) -> str | None:
    seq, want = head.get("seq"), head.get("hash")
    if seq not in hashes:
        last = f"#{len(hashes) - 1}" if hashes else "nothing"
        return (
            f"{who} recorded entry #{seq} as the log's head, but the chain ends at {last}: "
            "entries were removed from its end"
        )
    if hashes[seq][0] != want:
        return f"entry #{seq} ({hashes[seq][1]}) is not the one {who} recorded: the log was rewritten up to there"
    return None
