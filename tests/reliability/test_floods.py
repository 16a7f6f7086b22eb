"""A flood while a batch retrains, and a SIGKILL in the middle of it: nothing acknowledged is lost,
nothing refused is recorded, every call is in the audit log.

`sisa serve` on loopback (uvicorn, real tokens, the tiny store of tests/reliability/conftest.py)
with per-token rate limits low enough to refuse some calls (429 + Retry-After). `CLIENTS`
threads at once, on a few shared tokens: deletion requests (one record each, an idempotency key
each, filed twice; an unknown id too), rectifications (and an empty one), completions, and the
auditors' reads (requests, versions, one request, a certificate). The worker's first batch hangs
in the middle of its retrain (`SISA_FAULT_HANG`), the server is SIGKILLed while the clients go on,
and started again; a client whose connection was cut sends the same call again, as a client
does. Afterwards: every 202 is one ledger entry (the same key, the same request) and completes;
the ledger holds no other request (no 422 or 429 is recorded); the audit log holds an entry for
every answer a client got (who, what, status); `sisa verify --replay` holds.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sisa.storage.store import Store

from sisa.lineage import requests_ledger
from sisa.lineage.requests_ledger import RequestStatus
from tests.helpers import run_cli
from tests.pipelines.test_service import Server, _token
from tests.reliability.helpers import SLICES

pytestmark = pytest.mark.slow
CLIENTS = 50
# Shared tokens: 50 clients on 8, so some of them go over their token's rate.
TOKENS = {"requester": 3, "client": 3, "auditor": 2}
LIMITS = ("service.rate_limit_privacy_per_min=60", "service.rate_limit_burst=6")
SERVE = (
    *SLICES,
    "deletion.relief=true",
    "deletion.batch_after_h=0",
    "service.worker_interval_s=0.5",
    "store.lock_timeout_s=120",
    *LIMITS,
)
CUT = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectTimeout)


class Flood:
    """The clients' calls and every answer they got."""

    def __init__(self, url: str, tokens: dict[str, tuple[str, str]]):
        self.url, self.tokens = url, tokens
        self.answers: list[tuple[str, str, str, int]] = []  # (token name, method, path, status)
        self.outcomes: list[dict] = []  # one per filing: key, final status, request_id
        self.cut = 0  # calls that met no server (cut by the kill, or sent while it was down): sent again
        self.done = 0
        self.lock = threading.Lock()

    def call(self, token: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
        name, secret = self.tokens[token]
        deadline, cut = time.monotonic() + 600, False
        while True:
            try:
                r = httpx.request(
                    method, self.url + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=120
                )
            except CUT:
                assert time.monotonic() < deadline, f"{method} {path}: no server for 600 s"
                if not cut:
                    cut = True
                    with self.lock:
                        self.cut += 1
                time.sleep(0.5)
                continue
            with self.lock:
                self.answers.append((name, method, path, r.status_code))
                self.done += 1
            return r

    def file(self, token: str, path: str, body: dict) -> None:
        r = self.call(token, "POST", path, body)
        with self.lock:
            self.outcomes.append(
                {"key": body["idempotency_key"], "status": r.status_code, "request_id": r.json().get("request_id")}
            )
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1


KINDS = {"delete": "requester", "rectify": "requester", "complete": "client", "read": "auditor"}


def _client(flood: Flood, i: int, deletions: list[str], fixes: list[dict], pause: float) -> None:
    """Client i: three calls of one kind, a random pause before each."""
    rng = random.Random(i)
    kind = list(KINDS)[i % len(KINDS)]
    token = f"{KINDS[kind]}-{i % TOKENS[KINDS[kind]]}"
    mine = i // len(KINDS)  # this client's own record
    for step in range(3):
        time.sleep(rng.uniform(0, pause))
        if kind == "delete":  # filed twice with one key, then an unknown id
            body = {"ids": [deletions[mine]]} if step < 2 else {"ids": [f"nobody-{i}"]}
            flood.file(token, "/v1/deletion-requests", body | {"idempotency_key": f"del-{i}-{step // 2}"})
        elif kind == "rectify":  # filed twice with one key, then an empty one
            corrections = [fixes[mine]] if step < 2 else []
            flood.file(
                token, "/v1/rectifications", {"corrections": corrections, "idempotency_key": f"fix-{i}-{step // 2}"}
            )
        elif kind == "complete":
            r = flood.call(token, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
            assert r.status_code in (200, 429), r.text
        else:
            listed = flood.call(token, "GET", "/v1/deletion-requests")
            flood.call(token, "GET", "/v1/versions")
            ids = [x["request_id"] for x in listed.json()] if listed.status_code == 200 else []
            if ids:
                rid = rng.choice(ids)
                flood.call(token, "GET", f"/v1/deletion-requests/{rid}")
                flood.call(token, "GET", f"/v1/deletion-requests/{rid}/certificate")


class FaultyServer(Server):
    """`sisa serve` with extra environment (a fault for its first life) and its output in a file."""

    def __init__(self, root: Path, log: Path, env: dict[str, str], port: int | None = None):
        super().__init__(root, *SERVE)
        if port is not None:
            self.port = port
            self.args = [*self.args[:-1], f"service.port={port}"]
        self.log, self.env = log, env

    def start(self) -> FaultyServer:
        import subprocess
        import sys

        from tests.helpers import REPO
        from tests.reliability.helpers import sisa_env

        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sisa.pipelines.cli", "serve", *self.args],
                cwd=REPO,
                env=sisa_env(**self.env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 400  # a loaded machine, and 50 clients knocking meanwhile
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"sisa serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("sisa serve did not answer /healthz within 400 s")


def test_a_flood_and_a_kill_mid_batch_lose_nothing_acknowledged(trained_store, tmp_path):
    store = Store.open(str(trained_store))
    rows = sorted(store.index.table.to_pylist(), key=lambda r: r["record_id"])
    subjects = sorted({r["subject_id"] for r in rows})
    # Deletions and rectifications on different people, so no filing conflicts with another.
    deleted = set(subjects[: len(subjects) // 2])
    per_kind = -(-CLIENTS // len(KINDS))
    deletions = [r["record_id"] for r in rows if r["subject_id"] in deleted][:per_kind]
    fixes = [
        {"record_id": r["record_id"], "text": f"corrected text {n}."}
        for n, r in enumerate(x for x in rows if x["subject_id"] not in deleted)
    ][:per_kind]
    assert len(deletions) == len(fixes) == per_kind
    tokens = {}
    for role, count in TOKENS.items():
        for n in range(count):
            tokens[f"{role}-{n}"] = (f"{role}-{n}", _token(trained_store, role, f"{role}-{n}"))
    hang, log = tmp_path / "hanging", tmp_path / "serve.log"
    server = FaultyServer(trained_store, log, {"SISA_FAULT": "forget-during-retrain", "SISA_FAULT_HANG": str(hang)})
    server.start()
    flood = Flood(server.url, tokens)
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_client, flood, i, deletions, fixes, 3.0) for i in range(CLIENTS)]
        deadline = time.monotonic() + 180
        while not (hang.exists() and flood.done >= 60):
            assert time.monotonic() < deadline, f"no batch hung mid-retrain ({flood.done} answers)"
            assert not any(f.done() and f.exception() for f in futures), [f.exception() for f in futures if f.done()]
            time.sleep(0.1)
        answered_before_kill = flood.done
        server.stop(9)  # SIGKILL, the batch in the middle of its retrain
        again = FaultyServer(trained_store, log, {}, port=server.port).start()  # the clients' address
        for f in futures:
            f.result()
    flood_s = time.monotonic() - started
    try:
        acked = [o for o in flood.outcomes if o["status"] == 202]
        refused = [o for o in flood.outcomes if o["status"] != 202]
        assert acked and any(o["status"] == 429 for o in refused) and any(o["status"] == 422 for o in refused)
        by_key: dict[str, set[str]] = {}
        for o in acked:
            by_key.setdefault(o["key"], set()).add(o["request_id"])
        assert all(len(ids) == 1 for ids in by_key.values()), by_key  # one key, one request
        acked_ids = {next(iter(ids)) for ids in by_key.values()}
        deadline = time.monotonic() + 300
        while True:
            ledger = requests_ledger.all_requests(store)
            if all(r.status == RequestStatus.COMPLETED for r in ledger) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert sorted(r.request_id for r in ledger) == sorted(acked_ids)  # each once; nothing refused in it
        assert all(r.status == RequestStatus.COMPLETED for r in ledger), [(r.request_id, r.status) for r in ledger]
    finally:
        assert again.stop() == 0
    audit = Counter()
    for path in (trained_store / "service" / "audit").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            e = json.loads(line)
            if e.get("who") in tokens:
                audit[(e["who"], e["what"], e["outcome"].split()[0])] += 1
    answers = Counter((name, f"{m} {p}", str(s)) for name, m, p, s in flood.answers)
    missing = {k: n - audit[k] for k, n in answers.items() if audit[k] < n}
    assert not missing, missing
    code, out, err = run_cli("verify", "--replay", *_cli(trained_store))
    assert code == 0 and "verified" in out, out + err
    statuses = Counter(s for *_, s in flood.answers)
    print(
        f"\nflood: {CLIENTS} clients, {len(flood.answers)} answers {dict(statuses)}, {flood.cut} calls sent again "
        f"after 1 SIGKILL after {answered_before_kill} answers, {len(acked_ids)} requests acknowledged and completed, "
        f"{flood_s:.0f} s"
    )


def _cli(root: Path) -> list[str]:
    from tests.helpers import cli_args

    return cli_args(root, *SLICES)
