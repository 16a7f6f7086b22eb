"""Every endpoint of `sisa serve` driven from its own OpenAPI schema (Schemathesis): inputs that fit
the schema and inputs that do not, each with an admin token, a client token, a token that is not
one, or none. For every answer: no 5xx but 503, no answer slower than the request deadline
(`service.request_timeout_s`), no response that echoes a record's text or the text fields of the
call, and the store and the ledger unchanged by every call that was refused.

The default run sends `EXAMPLES` cases per operation and generation mode; the full run
(`pytest -m fuzz`, deselected by default in pyproject's addopts) `FULL_EXAMPLES`.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import requests_ledger
from tests.helpers import train_store, tree_digest
from tests.pipelines.test_service import Server, _token

pytestmark = pytest.mark.slow
EXAMPLES = 6
FULL_EXAMPLES = 100
DEADLINE_S = 10.0
ROWS = make_people(12, seed=23)
# Fields whose value is text a caller sends (a correction, a prompt, a message, a login token):
# an answer must never repeat it. Ids are named back on purpose (errors name the bad ids).
TEXT_FIELDS = {"text", "prompt", "answer", "completion", "content", "token"}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    train_store(root, ROWS, "sharding.slice_size=8")
    store_dir = root / "s"
    tokens = {role: _token(store_dir, role, f"fuzz-{role}") for role in ("admin", "client")}
    server = Server(
        store_dir,
        "sharding.slice_size=8",
        "deletion.relief=true",
        f"service.request_timeout_s={DEADLINE_S}",
        "service.max_tokens=16",
        "service.max_prompt_tokens=64",
        "service.rate_limit_privacy_per_min=0",
        "service.rate_limit_completions_per_min=0",
    ).start()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    yield server, store_dir, tokens, schema
    assert server.stop() == 0


def _state(store_dir) -> dict[str, str]:
    """The store's files and digests but the service's own (audit log, tokens), and the ledger."""
    files = {k: v for k, v in tree_digest(store_dir).items() if not k.startswith("service")}
    ledger = [r.public_dict() for r in requests_ledger.all_requests(Store.open(str(store_dir)))]
    return {"files": json.dumps(files, sort_keys=True), "ledger": json.dumps(ledger, sort_keys=True, default=str)}


def _texts(value) -> list[str]:
    """The caller's text fields in a body (nested), long enough that an echo is not chance."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in TEXT_FIELDS and isinstance(v, str) and len(v.strip()) >= 8:
                out.append(v)
            out += _texts(v)
    elif isinstance(value, list):
        for v in value:
            out += _texts(v)
    return out


class Fuzz:
    """What every case is checked against, and what the cases got."""

    def __init__(self, fuzzed):
        self.server, self.store_dir, tokens, self.schema = fuzzed
        self.records = [r["text"] for r in ROWS]
        self.headers = {
            "admin": {"Authorization": f"Bearer {tokens['admin']}"},
            "client": {"Authorization": f"Bearer {tokens['client']}"},
            "not a token": {"Authorization": "Bearer sisa_not-a-token"},
            "none": {},
        }
        self.seen: Counter = Counter()
        self.state = _state(self.store_dir)

    def run(self, examples: int) -> Counter:
        for result in self.schema.get_all_operations():
            op = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                self.operation(op, mode, examples)
        return self.seen

    def operation(self, op, mode: GenerationMode, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode), who=st.sampled_from(sorted(self.headers)))
        def one(case, who):
            self.check(case, f"{case.method} {case.formatted_path} as {who} ({mode.value})", self.headers[who], op.path)

        try:
            one()
        except Unsatisfiable:  # nothing of this operation can break its schema (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE, op.path

    def check(self, case, where: str, headers: dict, path: str) -> None:
        started = time.monotonic()
        try:
            r = case.call(base_url=self.server.url, headers=headers, timeout=DEADLINE_S + 20)
        except Exception as e:  # noqa: BLE001 - a request the client cannot even send is not the server's
            if "Invalid" in type(e).__name__ or "Encode" in type(e).__name__:
                return
            raise
        took = time.monotonic() - started
        where = f"{where}: {r.status_code}"
        self.seen[(case.method, path, r.status_code)] += 1
        assert r.status_code < 500 or r.status_code == 503, f"{where}: {r.text[:500]}"
        assert took < DEADLINE_S + 5, f"{where}: answered after {took:.1f} s"
        echoed = [t for t in self.records + _texts(case.body) if t in r.text]
        assert not echoed, f"{where}: the answer repeats text it was sent or a record's: {r.text[:300]}"
        now = _state(self.store_dir)
        if r.status_code >= 400:
            assert now == self.state, f"{where}: a refused call changed the store or the ledger"
        self.state = now


def _by_status(seen: Counter) -> Counter:
    out: Counter = Counter()
    for (_, _, status), n in seen.items():
        out[status] += n
    return out


def test_every_endpoint_holds_against_generated_inputs(fuzzed):
    seen = Fuzz(fuzzed).run(EXAMPLES)
    paths = {p for _, p, _ in seen}
    assert {"/v1/deletion-requests", "/v1/rectifications", "/v1/completions", "/v1/chat/completions"} <= paths
    print(f"\nfuzz: {sum(seen.values())} cases over {len(paths)} paths; statuses {dict(_by_status(seen))}")


@pytest.mark.fuzz
def test_every_endpoint_holds_against_many_generated_inputs(fuzzed):
    seen = Fuzz(fuzzed).run(FULL_EXAMPLES)
    print(f"\nfuzz (full): {sum(seen.values())} cases; statuses {dict(_by_status(seen))}")


def test_the_schema_names_every_route(fuzzed):
    """The fuzzer can only reach what the schema names: every route of the app is in it."""
    server, _, _, schema = fuzzed
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert {("POST", "/v1/deletion-requests"), ("POST", "/v1/rectifications"), ("POST", "/v1/completions")} <= routes
    assert {("GET", "/audit"), ("POST", "/login"), ("GET", "/healthz")} <= routes
    # What the fuzzer met most: a request id that is not one is a 404 (it was a 409).
    r = httpx.get(f"{server.url}/v1/deletion-requests/req-nobody", headers=_auth(fuzzed), timeout=30)
    assert r.status_code == 404 and "req-nobody" in r.json()["detail"], r.text


def _auth(fuzzed) -> dict[str, str]:
    return {"Authorization": f"Bearer {fuzzed[2]['admin']}"}
