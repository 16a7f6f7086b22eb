"""`sisa serve` as its users meet it: a real uvicorn server on an ephemeral loopback port, real
tokens from `sisa token create`, httpx and the `openai` client, a real store on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.forgetting import lineage_check
from sisa.lineage import requests_ledger
from sisa.lineage.requests_ledger import RequestStatus
from tests.helpers import REPO, cli_args, run_cli, train_store
from tests.reliability.helpers import sisa_env

pytestmark = pytest.mark.slow
ROWS = make_people(16, seed=51)
SLICES = ("sharding.slice_size=8",)
ROLES = ("requester", "auditor", "client", "admin")
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, *extra: str):
        self.port = _free_port()
        self.args = [*cli_args(root, *extra), f"service.port={self.port}"]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sisa.pipelines.cli", "serve", *self.args],
            cwd=REPO,
            env=sisa_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sisa serve exited {self.proc.returncode}: {self.proc.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise AssertionError("sisa serve did not answer /healthz within 180 s")

    def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _token(store_dir: Path, role: str, name: str) -> str:
    code, out, err = run_cli("token", "create", "--role", role, "--name", name, "--json", *cli_args(store_dir))
    assert code == 0, err
    return json.loads(out)["token"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    train_store(root, ROWS, *SLICES)
    store_dir = root / "s"
    tokens = {role: _token(store_dir, role, f"{role}-1") for role in ROLES}
    server = Server(store_dir, "sharding.slice_size=8", "deletion.relief=true", "store.lock_timeout_s=600").start()
    yield server, store_dir, tokens
    server.stop()


def _store_state(store_dir: Path) -> dict[str, str]:
    """The store's files and their digests, but the service's own (audit log, tokens)."""
    from tests.helpers import tree_digest

    return {k: v for k, v in tree_digest(store_dir).items() if not k.startswith("service")}


def _h(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def test_every_role_against_every_endpoint(served):
    server, store_dir, tokens = served
    subject = Store.open(str(store_dir)).index.table["subject_id"][0].as_py()
    calls = {
        "file": ("POST", "/v1/deletion-requests", {"subject": "no-such-subject"}),
        "list": ("GET", "/v1/deletion-requests", None),
        "versions": ("GET", "/v1/versions", None),
        "complete": ("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2}),
        # The tiny model has a chat template of its own (issue 15), so chat completions serve.
        "chat": ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}),
    }
    may = {
        "file": {"requester", "admin"},
        "list": {"requester", "auditor", "admin"},
        "versions": {"auditor", "admin"},
        "complete": {"client", "admin"},
        "chat": {"client", "admin"},
    }
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for name, (method, path, body) in calls.items():
            assert c.request(method, path, json=body).status_code == 401, name
            assert c.request(method, path, json=body, headers=_h("sisa_not-a-token")).status_code == 401, name
            for role in ROLES:
                r = c.request(method, path, json=body, headers=_h(tokens[role]))
                ok = {"file": 422, "list": 200, "versions": 200, "complete": 200, "chat": 200}[
                    name
                ]  # file: an unknown subject
                assert r.status_code == (ok if role in may[name] else 403), (name, role, r.status_code, r.text)
        r = c.get("/audit", headers=_h(tokens["client"]))
        assert r.status_code == 403
        assert "deletion requests" in c.get("/audit", headers=_h(tokens["auditor"])).text
    assert subject  # the store has people to forget


def test_bad_selectors_are_refused_and_nothing_is_recorded(served):
    server, store_dir, tokens = served
    store = Store.open(str(store_dir))
    before = [r.request_id for r in requests_ledger.all_requests(store)]
    with httpx.Client(base_url=server.url, timeout=120, headers=_h(tokens["requester"])) as c:
        r = c.post("/v1/deletion-requests", json={"ids": ["nobody-1", "nobody-2"]})
        assert r.status_code == 422 and "nobody-1" in r.json()["detail"] and "nobody-2" in r.json()["detail"]
        assert c.post("/v1/deletion-requests", json={"subject": "a", "source": "b"}).status_code == 422
        assert c.post("/v1/deletion-requests", json={}).status_code == 422
        assert c.post("/v1/deletion-requests", json={"ids": "not-a-list"}).status_code == 422
    assert [r.request_id for r in requests_ledger.all_requests(store)] == before


def test_concurrent_requests_with_idempotency_keys_are_none_lost_none_doubled(served):
    server, store_dir, tokens = served
    store = Store.open(str(store_dir))
    known = {r.request_id for r in requests_ledger.all_requests(store)}
    ids = sorted(store.index.table["record_id"].to_pylist())[-10:]
    jobs = [(rid, f"key-{rid}") for rid in ids for _ in range(2)]  # every id filed twice, same key

    def post(job):
        rid, key = job
        r = httpx.post(
            f"{server.url}/v1/deletion-requests",
            json={"ids": [rid], "idempotency_key": key},
            headers=_h(tokens["requester"]),
            timeout=600,
        )
        return rid, r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, jobs))
    assert all(code == 202 for _, code, _ in results), [(rid, code, body) for rid, code, body in results if code != 202]
    by_id: dict[str, set[str]] = {}
    for rid, _, body in results:
        by_id.setdefault(rid, set()).add(body["request_id"])
    assert all(len(v) == 1 for v in by_id.values()), by_id  # the same key, the same request
    new = [r for r in requests_ledger.all_requests(store) if r.request_id not in known]
    assert len(new) == len(ids) and sorted(r.request_id for r in new) == sorted(x for v in by_id.values() for x in v)
    assert all(r.status == RequestStatus.QUEUED and r.records == 1 for r in new)


def test_completions_follow_the_version_that_commits(served):
    from openai import OpenAI

    server, store_dir, tokens = served
    client = OpenAI(base_url=f"{server.url}/v1", api_key=tokens["client"], timeout=300, max_retries=0)
    first = client.completions.create(model="sisa", prompt="Hello", max_tokens=3)
    store = Store.open(str(store_dir))
    assert first.model == f"sisa-model@v{store.current_version()}" and isinstance(first.choices[0].text, str)
    subject = sorted(set(store.index.live()["subject_id"].to_pylist()))[0]
    r = httpx.post(
        f"{server.url}/v1/deletion-requests", json={"subject": subject}, headers=_h(tokens["admin"]), timeout=600
    )
    assert r.status_code == 202, r.text
    now = r.json()["serving_version"]
    after = client.completions.create(model="sisa", prompt="Hello", max_tokens=3)
    assert after.model == f"sisa-model@v{now}"


def test_a_killed_server_loses_no_acknowledged_request(tmp_path, make_trained_store):
    make_trained_store(ROWS, *SLICES)
    store_dir = tmp_path / "s"
    token = _token(store_dir, "requester", "desk")
    store = Store.open(str(store_dir))
    subject = store.index.table["subject_id"][0].as_py()
    server = Server(store_dir, "sharding.slice_size=8", "deletion.relief=true").start()  # batches wait 24 h
    r = httpx.post(f"{server.url}/v1/deletion-requests", json={"subject": subject}, headers=_h(token), timeout=600)
    assert r.status_code == 202, r.text
    request_id = r.json()["request_id"]
    server.stop(signal.SIGKILL)
    (req,) = requests_ledger.all_requests(store)
    assert req.request_id == request_id and req.status == RequestStatus.QUEUED
    # Restarted with a policy that is due at once, the worker completes it.
    again = Server(
        store_dir, "sharding.slice_size=8", "deletion.batch_after_h=0", "service.worker_interval_s=0.5"
    ).start()
    try:
        deadline = time.monotonic() + 300
        while (
            time.monotonic() < deadline
            and requests_ledger.read_request(store, request_id).status != RequestStatus.COMPLETED
        ):
            time.sleep(1)
        assert requests_ledger.read_request(store, request_id).status == RequestStatus.COMPLETED
        cert = httpx.get(
            f"{again.url}/v1/deletion-requests/{request_id}/certificate",
            headers=_h(_token(store_dir, "auditor", "aud")),
            timeout=60,
        )
        assert cert.status_code == 200 and cert.json()["certificate"]["lineage_check"]["passed"]
    finally:
        assert again.stop() == 0  # Ctrl-C stops cleanly
    audit = "".join(p.read_text() for p in (store_dir / "service" / "audit").glob("*.jsonl"))
    assert request_id in audit and subject not in audit  # who, what, outcome; never the subject
    assert (
        os.path.exists(store_dir / "service" / "tokens.json")
        and token not in (store_dir / "service" / "tokens.json").read_text()
    )


def test_the_audit_page_in_a_real_browser(served, tmp_path):
    """Debian's chromium, driven by Playwright: sign in with an auditor token, see the requests
    with their deadlines and the certificate checks, save a screenshot."""
    from playwright.sync_api import sync_playwright

    server, store_dir, tokens = served
    live = Store.open(str(store_dir)).index.live()
    subject = sorted(set(live["subject_id"].to_pylist()))[-1]
    r = httpx.post(
        f"{server.url}/v1/deletion-requests", json={"subject": subject}, headers=_h(tokens["requester"]), timeout=600
    )
    assert r.status_code == 202, r.text
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium (see the Makefile)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/audit", timeout=120_000)
            assert page.url.endswith("/login")  # no session yet
            page.fill("input[name=token]", tokens["client"])
            page.click("button")
            assert "may not open the audit page" in page.content()
            page.goto(f"{server.url}/login")
            page.fill("input[name=token]", tokens["auditor"])
            page.click("button")
            page.wait_for_url("**/audit", timeout=120_000)
            text = page.inner_text("body")
            assert "deletion requests" in text and "lineage check" in text and "serving: version" in text
            reqs = requests_ledger.all_requests(Store.open(str(store_dir)))
            assert reqs and all(r.request_id in text for r in reqs)
            cookie = next(c for c in page.context.cookies() if c["name"] == "sisa_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            shot = tmp_path / "audit.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
        finally:
            browser.close()


def test_the_audit_page_shows_the_latest_reports_plots_to_auditors_only(served):
    server, store_dir, tokens = served
    reports = store_dir / "reports"
    reports.mkdir(exist_ok=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # the bytes are served as they are
    (reports / "memorization_by_version.png").write_bytes(png)
    (reports / "report.md").write_text("not a plot")
    with httpx.Client(base_url=server.url, timeout=120) as c:
        page = c.get("/audit", headers=_h(tokens["auditor"])).text
        assert '<img src="/audit/reports/memorization_by_version.png"' in page and "report.md" not in page
        r = c.get("/audit/reports/memorization_by_version.png", headers=_h(tokens["auditor"]))
        assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
        assert c.get("/audit/reports/memorization_by_version.png").status_code == 401
        assert c.get("/audit/reports/memorization_by_version.png", headers=_h(tokens["client"])).status_code == 403
        for name in ("report.md", "..%2Fsecret.key", "missing.png"):
            assert c.get(f"/audit/reports/{name}", headers=_h(tokens["admin"])).status_code == 404, name


def test_a_rectification_filed_over_http_is_relieved_at_once_and_batched_with_a_deletion(tmp_path):
    """POST /v1/rectifications: the roles of filing a deletion request; bad corrections refused
    naming the ids with nothing recorded; a good one queued with its relief serving, carried out
    by the worker's batch together with a deletion of the same shard (one retrain); afterwards the
    record has the new text, replay verifies, rollback to a version that saw the old text is
    refused, and neither the old text nor the new one is anywhere but in the data (the new)."""
    import uuid

    from sisa.lineage import checkpoints, versions
    from tests.helpers import canaries_in_text, find_canaries

    root = tmp_path
    rows = ROWS
    train_store(root, rows, *SLICES, tracking=True)
    store_dir = root / "s"
    tokens = {role: _token(store_dir, role, f"{role}-1") for role in ROLES}
    store = Store.open(str(store_dir))
    texts = {r["record_id"]: r for r in rows}
    target = next(r for r in store.index.table.to_pylist() if texts[r["record_id"]].get("prompt"))
    old = texts[target["record_id"]]
    other = next(
        r
        for r in store.index.table.to_pylist()
        if r["shard_id"] == target["shard_id"] and r["subject_id"] != target["subject_id"]
    )
    gone = {r["record_id"]: r["text"] for r in rows if r["subject_id"] == other["subject_id"]}
    old_hash = checkpoints.content_hashes(store, [target["record_id"]], [target["content_sha256"]])[0]
    secret = uuid.uuid4().hex
    fix = {
        "record_id": target["record_id"],
        "text": f"{old['prompt']} NEW-{secret}.",
        "prompt": old["prompt"],
        "answer": f" NEW-{secret}.",
    }
    # Batches are due once two requests wait: the rectification waits for the deletion.
    server = Server(
        store_dir,
        "sharding.slice_size=8",
        "deletion.relief=true",
        "deletion.batch_max=2",
        "service.worker_interval_s=0.5",
        "tracking.enabled=true",
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            state = _store_state(store_dir)
            unknown = {
                "corrections": [
                    {"record_id": "nobody-1", "text": f"x {secret}"},
                    {"record_id": "nobody-2", "text": f"y {secret}"},
                ]
            }
            assert c.post("/v1/rectifications", json=unknown).status_code == 401
            for role in ROLES:
                r = c.post("/v1/rectifications", json=unknown, headers=_h(tokens[role]))
                assert r.status_code == (422 if role in {"requester", "admin"} else 403), (role, r.status_code, r.text)
                if r.status_code == 422:
                    assert (
                        "nobody-1" in r.json()["detail"] and "nobody-2" in r.json()["detail"] and secret not in r.text
                    )
            h = _h(tokens["requester"])
            for body in (
                {"corrections": []},
                {"corrections": [{"record_id": target["record_id"]}]},
                {"corrections": [{"record_id": target["record_id"], "text": "  "}]},
                {"corrections": [{"record_id": target["record_id"], "text": 7}]},
            ):
                r = c.post("/v1/rectifications", json=body, headers=h)
                assert r.status_code == 422, (body, r.text)
            r = c.post(
                "/v1/rectifications",
                json={"corrections": [{"record_id": target["record_id"], "text": {"nested": secret}}]},
                headers=h,
            )
            assert r.status_code == 422 and secret not in r.text  # the body's input is not echoed
            assert requests_ledger.all_requests(store) == [] and _store_state(store_dir) == state

            r = c.post("/v1/rectifications", json={"corrections": [fix], "idempotency_key": "fix-1"}, headers=h)
            assert r.status_code == 202, r.text
            ack = r.json()
            assert ack["kind"] == "rectify" and ack["status"] == "queued"
            req = requests_ledger.read_request(store, ack["request_id"])
            assert req.versions["relief"] == ack["serving_version"] == store.current_version()
            assert not lineage_check.lineage_violations(store, versions.current(store).shards, {old_hash})
            again = c.post(
                "/v1/rectifications", json={"corrections": [fix], "idempotency_key": "fix-1"}, headers=h
            ).json()
            assert again["request_id"] == ack["request_id"] and again["replayed"]
            r = c.post("/v1/deletion-requests", json={"subject": other["subject_id"]}, headers=h)
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not all(
                x.status == RequestStatus.COMPLETED for x in requests_ledger.all_requests(store)
            ):
                time.sleep(1)
            reqs = requests_ledger.all_requests(store)
            assert len(reqs) == 2 and all(x.status == RequestStatus.COMPLETED for x in reqs), [
                (x.request_id, x.status, x.errors) for x in reqs
            ]
            assert reqs[0].batch_id == reqs[1].batch_id and [x["shard_id"] for x in reqs[0].retrained] == [
                target["shard_id"]
            ]

            # A forgotten id now, and an unknown one: refused naming both; nothing recorded.
            forgotten = next(iter(gone))
            state = _store_state(store_dir)
            r = c.post(
                "/v1/rectifications",
                json={
                    "corrections": [
                        {"record_id": forgotten, "text": f"z {secret}"},
                        {"record_id": "nobody-3", "text": "w"},
                    ]
                },
                headers=h,
            )
            assert (
                r.status_code == 422
                and forgotten in r.json()["detail"]
                and "nobody-3" in r.json()["detail"]
                and secret not in r.text
            )
            assert len(requests_ledger.all_requests(store)) == 2 and _store_state(store_dir) == state
            listed = {x["request_id"]: x["kind"] for x in c.get("/v1/deletion-requests", headers=h).json()}
            assert listed[ack["request_id"]] == "rectify"
            cert = c.get(
                f"/v1/deletion-requests/{ack['request_id']}/certificate", headers=_h(tokens["auditor"])
            ).json()["certificate"]
            assert cert["lineage_check"]["passed"] and cert["rectification"]["new_content_check"]["passed"]
    finally:
        assert server.stop() == 0
    server_output = server.proc.stdout.read()

    store = Store.open(str(store_dir))
    (after,) = store.index.lookup([target["record_id"]])[0].to_pylist()
    assert (after["status"], after["shard_id"], after["slice_idx"]) == ("live", target["shard_id"], target["slice_idx"])
    (row,) = [
        x
        for x in store.read_slice(after["shard_id"], after["slice_idx"]).to_pylist()
        if x["record_id"] == target["record_id"]
    ]
    assert secret in row["text"]
    args = cli_args(store_dir, "sharding.slice_size=8", tracking=True)
    code, out, err = run_cli("verify", "--replay", *args)
    assert code == 0 and "verified" in out, out + err
    code, out, err = run_cli("rollback", "1", *args)
    assert code != 0 and "purged" in out + err
    # The old text (and the deleted person's) nowhere; the new text only in the data.
    found = find_canaries({"store": store_dir}, {"old text": old["text"], **gone}, strict={"store"})
    assert not any(found.values()), found
    new_hits = find_canaries({"store": store_dir}, {"new text": secret}, strict={"store"})["new text"]
    assert new_hits and all("/data/" in h.path for h in new_hits), [str(h) for h in new_hits]
    assert not canaries_in_text(server_output, {"old": old["text"], "new": secret})
