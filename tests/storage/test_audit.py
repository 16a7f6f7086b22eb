"""The service's audit log (storage/audit.py): one JSON line per event, appended to the day's
file and read back newest first."""

from __future__ import annotations

import json
from pathlib import Path

from sisa.storage import layout
from sisa.storage.audit import GENESIS, AuditLog, entry_hash, verify_chain
from sisa.storage.fs import StoreFS


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


# -- the hash chain ---------------------------------------------------------------------------------
def _chained_log(tmp_path, n: int = 6) -> tuple[StoreFS, Path]:
    fs = StoreFS(str(tmp_path / "s"))
    log = AuditLog(fs)
    for i in range(n):
        log.append({"who": "alice", "what": "GET /v1/deletion-requests", "outcome": "200", "n": i})
    (day,) = sorted(Path(fs.full(layout.SERVICE_AUDIT)).iterdir())
    return fs, day


def _rewrite(day: Path, lines: list[str]) -> None:
    day.write_text("".join(x + "\n" for x in lines))


def test_an_intact_chain_verifies_and_its_head_is_the_last_entry(tmp_path):
    fs, day = _chained_log(tmp_path)
    lines = day.read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["seq"] == 0 and first["prev"] == GENESIS and last["prev"] == json.loads(lines[-2])["hash"]
    report = verify_chain(fs)
    assert report.ok and report.entries == 6 and report.legacy == 0
    assert report.head == AuditLog(fs).head() == {"seq": 5, "hash": last["hash"]}
    assert verify_chain(fs, [("the certificate of req-1", report.head)]).ok


def test_an_edited_line_is_caught_and_named(tmp_path):
    fs, day = _chained_log(tmp_path)
    lines = day.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["outcome"] = "403"
    _rewrite(day, [*lines[:2], json.dumps(entry, sort_keys=True), *lines[3:]])
    report = verify_chain(fs)
    assert not report.ok and report.where == f"{day.name}:3" and "entry #2" in report.problem
    assert "changed" in report.problem


def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_link(tmp_path):
    fs, day = _chained_log(tmp_path)
    lines = day.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["who"] = "mallory"
    entry["hash"] = entry_hash(entry)
    _rewrite(day, [*lines[:2], json.dumps(entry, sort_keys=True), *lines[3:]])
    report = verify_chain(fs)
    assert report.where == f"{day.name}:4" and "does not chain from entry #2" in report.problem
    assert f"{day.name}:3" in report.problem


def test_a_deleted_line_is_caught_and_named(tmp_path):
    fs, day = _chained_log(tmp_path)
    lines = day.read_text().splitlines()
    _rewrite(day, [*lines[:3], *lines[4:]])
    report = verify_chain(fs)
    assert report.where == f"{day.name}:4" and "entry #3 was removed" in report.problem


def test_two_swapped_lines_are_caught_and_named(tmp_path):
    fs, day = _chained_log(tmp_path)
    lines = day.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(day, lines)
    report = verify_chain(fs)
    assert report.where == f"{day.name}:2" and "entry #2" in report.problem and "out of order" in report.problem
    assert f"entry #1 belongs here, not at {day.name}:3" in report.problem


def test_a_tail_cut_after_a_certificate_recorded_the_head_is_caught(tmp_path):
    fs, day = _chained_log(tmp_path)
    head = AuditLog(fs).head()
    AuditLog(fs).append({"who": "bob", "what": "POST /v1/deletion-requests", "outcome": "202"})
    lines = day.read_text().splitlines()
    _rewrite(day, lines[:4])  # entries #4..#6 gone; the rest still chains
    assert verify_chain(fs).ok  # the chain alone cannot see a cut tail...
    report = verify_chain(fs, [("the certificate of req-7", head)])  # ...the signed head can
    assert not report.ok and "req-7 recorded entry #5" in report.problem and "ends at #3" in report.problem
    day.unlink()
    assert "ends at nothing" in verify_chain(fs, [("the certificate of req-7", head)]).problem


def test_a_rewritten_chain_does_not_match_the_recorded_head(tmp_path):
    fs, day = _chained_log(tmp_path)
    head = AuditLog(fs).head()
    day.unlink()
    _chained_log(tmp_path)  # a whole new, self-consistent chain of the same length
    report = verify_chain(fs, [("the certificate of req-7", head)])
    assert "entry #5" in report.problem and "not the one the certificate of req-7 recorded" in report.problem


def test_legacy_lines_come_before_the_chain_and_are_counted(tmp_path):
    fs = StoreFS(str(tmp_path / "s"))
    folder = Path(fs.full(layout.SERVICE_AUDIT))
    folder.mkdir(parents=True)
    old = folder / "2026-01-01.jsonl"  # written before the log was chained
    old.write_text("".join(json.dumps({"at": "2026-01-01T00:00:00", "n": i}) + "\n" for i in range(3)))
    log = AuditLog(fs)
    log.append({"n": 3})
    log.append({"n": 4})
    report = verify_chain(fs)
    assert report.ok and report.legacy == 3 and report.entries == 2 and report.head["seq"] == 1
    new = sorted(folder.iterdir())[-1]
    new.write_text(new.read_text() + json.dumps({"at": "x", "n": 5}) + "\n")  # a legacy-looking line, later
    assert "no chain fields" in verify_chain(fs).problem


def test_a_torn_last_line_stays_its_own_line_and_is_named(tmp_path):
    fs, day = _chained_log(tmp_path, 3)
    day.write_text(day.read_text() + '{"at": "2026')  # a crash mid-line
    AuditLog(fs).append({"n": "after the crash"})
    lines = day.read_text().splitlines()
    assert json.loads(lines[-1])["seq"] == 3 and json.loads(lines[-1])["prev"] == json.loads(lines[2])["hash"]
    report = verify_chain(fs)
    assert report.where == f"{day.name}:4" and "not a JSON object" in report.problem


def test_appends_from_many_threads_and_two_logs_keep_one_chain(tmp_path):
    """The service's routes and its worker share one AuditLog; a second process has its own
    (the flock on service/AUDIT.LOCK): neither forks the chain."""
    import threading

    fs = StoreFS(str(tmp_path / "s"))
    shared, other = AuditLog(fs), AuditLog(StoreFS(str(tmp_path / "s")))

    def burst(log: AuditLog, who: str) -> None:
        for i in range(40):
            log.append({"who": who, "n": i})

    threads = [threading.Thread(target=burst, args=(log, f"t{k}")) for k, log in enumerate([shared] * 3 + [other] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_chain(fs)
    assert report.ok and report.entries == 240, report.problem
