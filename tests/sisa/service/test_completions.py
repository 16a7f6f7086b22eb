"""The applications' API as an application meets it: the real `openai` client (streaming
included) and raw server-sent events over httpx, against `sisa serve` on loopback, on a trained
tiny store (sisa/service/completions.py, openai_api.py, serving/batcher.py)."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sisa.data.synthetic import make_people
from tests.helpers import train_store
from tests.pipelines.test_service import Server, _token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from openai import OpenAI

    root = tmp_path_factory.mktemp("openai")
    train_store(root, make_people(12, seed=7), "sharding.slice_size=8")
    token = _token(root / "s", "client", "app")
    server = Server(
        root / "s", "sharding.slice_size=8", "service.max_prompt_tokens=200", "service.max_tokens=64"
    ).start()
    client = OpenAI(base_url=f"{server.url}/v1", api_key=token, timeout=300, max_retries=0)
    yield server, client, token
    server.stop()


def _tokens(text: str) -> int:
    from sisa.config import ModelConfig
    from sisa.model.base import load_base_model

    tok = load_base_model(ModelConfig(name="tiny", device="cpu"))[1]
    return len(tok(text)["input_ids"])


def test_usage_n_logprobs_stop_and_models(api):
    server, client, _ = api
    (model,) = client.models.list().data
    assert model.id.startswith("sisa-model@v") and model.owned_by == "sisa"
    one = client.completions.create(model=model.id, prompt="Hello there", max_tokens=6, logprobs=2)
    c = one.choices[0]
    assert one.model == model.id and c.finish_reason in ("stop", "length")
    assert one.usage.prompt_tokens == _tokens("Hello there")
    assert one.usage.completion_tokens == len(c.logprobs.tokens) <= 6
    assert one.usage.total_tokens == one.usage.prompt_tokens + one.usage.completion_tokens
    assert all(len(top) <= 2 for top in c.logprobs.top_logprobs) and all(lp <= 0 for lp in c.logprobs.token_logprobs)
    assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs)
    two = client.completions.create(model=model.id, prompt=["Hello", "Ada"], max_tokens=4, n=2, temperature=1.0, seed=3)
    assert [ch.index for ch in two.choices] == [0, 1, 2, 3]
    assert two.usage.prompt_tokens == _tokens("Hello") + _tokens("Ada")
    greedy = client.completions.create(model=model.id, prompt="Ada", max_tokens=12).choices[0].text
    if greedy[1:3].strip():
        stop = greedy[1:3]
        cut = client.completions.create(model=model.id, prompt="Ada", max_tokens=12, stop=[stop]).choices[0]
        assert cut.finish_reason == "stop" and stop not in cut.text and greedy.startswith(cut.text)


def test_streams_add_up_to_the_answer(api):
    server, client, _ = api
    whole = client.completions.create(model="sisa", prompt="Ada works", max_tokens=10).choices[0].text
    chunks = list(
        client.completions.create(
            model="sisa", prompt="Ada works", max_tokens=10, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == _tokens("Ada works")
    chat = client.chat.completions.create(model="sisa", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    streamed = list(
        client.chat.completions.create(
            model="sisa", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
    )
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == chat.choices[0].message.content
    assert chat.usage.completion_tokens > 0 or chat.choices[0].finish_reason == "stop"


def test_raw_server_sent_events(api):
    server, _, token = api
    body = {"prompt": "Hello", "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "text_completion" and len(e["choices"]) == 1 for e in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_what_is_not_served_is_refused_in_openai_shape_before_any_work(api):
    import openai

    server, client, token = api
    for kwargs, named in [
        ({"top_p": 0.5}, "top_p"),
        ({"echo": True}, "echo"),
        ({"max_tokens": 65}, "max_tokens"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="sisa", prompt="Hello", **({"max_tokens": 4} | kwargs))
        assert named in str(e.value), (kwargs, str(e.value))
    started = time.monotonic()
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "x " * 200_000, "max_tokens": 4},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert r.status_code == 400 and "max_prompt_tokens" in r.json()["error"]["message"]
    assert time.monotonic() - started < 10
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "Hello", "n": 0},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hello"}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_concurrent_clients_get_the_answers_each_gets_alone(api):
    server, client, _ = api
    prompts = [f"Person {i} works as a" for i in range(8)]
    alone = [client.completions.create(model="sisa", prompt=p, max_tokens=8).choices[0].text for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda p: client.completions.create(model="sisa", prompt=p, max_tokens=8).choices[0].text, prompts)
        )
    assert together == alone


def test_sigterm_ends_an_open_stream_within_the_shutdown_bound(make_trained_store, tmp_path):
    make_trained_store(make_people(4, seed=9), "sharding.slice_size=8")
    token = _token(tmp_path / "s", "client", "app")
    server = Server(
        tmp_path / "s", "sharding.slice_size=8", "service.shutdown_timeout_s=2", "service.max_tokens=100000"
    ).start()
    body = {"prompt": "Hello", "max_tokens": 100000, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as r:
        assert r.status_code == 200
        started = time.monotonic()
        code = server.stop(signal.SIGTERM)
    assert time.monotonic() - started < 2 + 20, "SIGTERM did not drain within the bound"
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the exit status is SIGTERM's.
    assert code in (0, -signal.SIGTERM)
