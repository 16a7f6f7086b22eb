"""`serving.engine: vllm` against a real vLLM server on 127.0.0.1 (the CPU build, `make vllm`):
sisa routes, vLLM decodes (sisa/serving/vllm_route.py, vllm_adapters.py, vllm_server.py).

The base is a small random Llama written as a folder (vLLM cannot load sisa's in-memory tiny
model, and its CPU attention wants a head size of 32 or more), trained into a store of 2 shards
on facts. Checked: the text of every prompt equal to sisa's own top-1 decode, with both shards
serving some of them; the
version switch loads the new version's adapters and unloads the old ones; a purge unloads every
purged adapter; a vLLM out of reach makes the purge fail closed, the request open, nothing
destroyed, until it answers again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from sisa.data.synthetic import make_people
from tests.helpers import REPO, train_store
from tests.pipelines.test_service import Server, _token
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
if not VLLM_PYTHON.exists():
    if os.environ.get("SISA_REQUIRE_VLLM"):
        raise RuntimeError(f"{VLLM_PYTHON} is missing: `make vllm` installs the vLLM environment")
    pytest.skip("the vLLM environment is missing: `make vllm`", allow_module_level=True)

# Hard training on the random base, so each shard's greedy decode differs from prompt to prompt and
# the comparison with vLLM's means something. Tuned with each step's records in the order drawn:
# with length grouping (the default) both shards decode one string for every prompt.
TRAINING = (
    "training.epochs=16",
    "training.lr=0.02",
    "training.group_by_length=false",
    "sharding.slice_size=8",
    "lora.r=8",
    "lora.alpha=16",
)


def write_base(folder: Path) -> str:
    """A random 2-layer Llama (head size 64) with sisa's byte-level tiny tokenizer, float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sisa.model.base import _build_tiny_tokenizer

    tok = _build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    base = write_base(root / "base")
    rows = make_people(8, seed=3)
    extra = (
        f"model.name={base}",
        *TRAINING,
        "serving.engine=vllm",
        "serving.top_shards=1",
        f"service.vllm_python={VLLM_PYTHON}",
        f"service.vllm_port={free_port()}",
        "service.vllm_start_timeout_s=300",
    )
    t = train_store(root, rows, *extra)
    return root, t.cfg, rows, extra


@pytest.fixture(scope="module")
def vllm(trained):
    from sisa.serving.vllm_client import VllmClient
    from sisa.serving.vllm_server import VllmServer

    _, cfg, _, _ = trained
    server = VllmServer(cfg)
    server.start()
    client = VllmClient(server.url)
    yield server, client
    client.close()
    server.stop()
    assert server.proc is None


def _route_texts(cfg, store, client, ens, shards, prompts: list[str], n: int) -> list[str]:
    from sisa.model.decoding import DecodeRequest
    from sisa.serving.batcher import Done, Error
    from sisa.serving.vllm_adapters import VllmAdapters
    from sisa.serving.vllm_route import VllmRoute

    adapters = VllmAdapters(cfg, client)
    adapters.hold(store, 0, shards)
    route = VllmRoute(ens, client, shards, max_batch=8, on_drained=lambda: adapters.release(0))
    results: dict[int, object] = {}
    done = threading.Event()

    def on(i):
        def put(event):
            if isinstance(event, Done | Error):
                results[i] = event
                if len(results) == len(prompts):
                    done.set()

        return put

    for i, p in enumerate(prompts):
        route.submit(DecodeRequest(ens.tokenizer(p)["input_ids"], n, top_shards=1), on(i), timeout_s=120)
    assert done.wait(180), "vLLM did not answer every prompt within 180 s"
    assert route.close(timeout_s=30)
    errors = [e.message for e in results.values() if isinstance(e, Error)]
    assert not errors, errors
    return [results[i].completions[0].text for i in range(len(prompts))]


@pytest.mark.parametrize("favoured", [None, 0, 1])
def test_text_equals_sisas_top1_decode(trained, vllm, favoured):
    """Routed by the posterior as trained, then with a prior that sends every prompt to shard 0,
    then to shard 1: both adapters' decodes compared (the random base learns no fact, so its
    shards differ little; recall on SmolLM2 is benchmarks/serve.py's)."""
    from sisa.storage.store import Store

    from sisa.model.decoding import DecodeRequest, route
    from sisa.serving.engine import generate_many, load_serving

    _, cfg, rows, _ = trained
    _, client = vllm
    store = Store.open(cfg.store.uri)
    prompts = [r["prompt"] for r in rows]
    v, ens = load_serving(store, cfg)
    assert ens.top_shards == 1 and sorted(v.shards) == [0, 1]
    if favoured is not None:
        ens.record_counts = {k: 10**12 if k == favoured else 1 for k in v.shards}
    chosen = route(
        ens.model,
        ens.tokenizer,
        ens.adapter_names(),
        [DecodeRequest(ens.tokenizer(p)["input_ids"], top_shards=1) for p in prompts],
        ens.log_prior(),
    )
    if favoured is not None:
        assert {c[0] for c in chosen} == {favoured}
    ours = generate_many(ens, prompts, [12] * len(prompts))
    theirs = _route_texts(cfg, store, client, ens, v.shards, prompts, 12)
    assert theirs == ours and len(set(ours)) > 1
    # the route let its adapters go once it was done
    assert not {a for a in client.adapters() if a.startswith("s")}


def test_serve_switch_purge_and_fail_closed(trained, vllm, tmp_path):
    from sisa.storage.store import Store

    from sisa.lineage import checkpoints, requests_ledger, versions
    from tests.helpers import cli_args, run_cli

    root, cfg, rows, extra = trained
    server_v, client = vllm
    store_dir = root / "s"
    token = _token(store_dir, "client", "app")
    served = Server(store_dir, *extra, f"service.vllm_url={server_v.url}", "store.lock_timeout_s=600").start()
    try:
        body = {"model": "sisa", "prompt": rows[0]["prompt"], "max_tokens": 8, "temperature": 0}
        headers = {"Authorization": f"Bearer {token}"}
        first = httpx.post(f"{served.url}/v1/completions", json=body, headers=headers, timeout=120)
        assert first.status_code == 200, first.text
        store = Store.open(cfg.store.uri)
        v1 = versions.current(store)
        assert set(v1.shards.values()) <= client.adapters()

        # vLLM out of reach: the purge fails closed, the request stays open, nothing is destroyed
        dead = [f"service.vllm_url=http://127.0.0.1:{free_port()}"]
        args = [*cli_args(store_dir, *extra), *dead]
        code, out, err = run_cli("forget", "--ids", rows[0]["record_id"], "--json", *args)
        assert code != 0 and "cannot be reached" in err and "purge is not complete" in err
        store = Store.open(cfg.store.uri)
        (req,) = requests_ledger.all_requests(store)
        assert req.status.value != "completed" and req.errors and "cannot be reached" in req.errors[-1]["error"]
        kept = {c for s in v1.shards for c in checkpoints.checkpoint_ids(store, s)}
        assert set(v1.shards.values()) <= kept  # nothing destroyed
        assert set(v1.shards.values()) <= client.adapters()

        # the real address: the resumed purge unloads every purged adapter
        code, out, err = run_cli("forget", "--resume", "--json", *cli_args(store_dir, *extra))
        assert code == 0, err
        (done,) = json.loads(out)
        assert done["status"] == "completed"
        purged = set(done["purge"]["checkpoints"])
        assert purged and not purged & client.adapters()
        assert set(done["purge"]["unloaded_from_vllm"]) <= purged

        # the next request switches to the new version and decodes with its adapters
        again = httpx.post(f"{served.url}/v1/completions", json=body, headers=headers, timeout=120)
        assert again.status_code == 200, again.text
        v2 = versions.current(Store.open(cfg.store.uri))
        assert v2.model_version > v1.model_version
        held = client.adapters()
        assert set(v2.shards.values()) <= held and not purged & held
    finally:
        served.stop()


def _group_alive(pgid: int) -> list[str]:
    """The processes of process group `pgid` that still run (zombies are dead)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "status", "name"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(f"{proc.pid} {proc.info['name']}")
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def test_a_killed_sisa_leaves_no_vllm_behind(trained):
    """SIGKILL of the process that started the vLLM server: the server and its engine processes
    go too (the keeper of vllm_server.py, told by the kernel)."""
    import signal
    import subprocess
    import sys
    import time

    _, cfg, _, extra = trained
    port = free_port()
    script = (
        "import sys\n"
        "from tests.helpers import make_cfg\n"
        "from sisa.serving.vllm_server import VllmServer\n"
        "cfg = make_cfg(sys.argv[1], *sys.argv[2:])\n"
        "server = VllmServer(cfg)\n"
        "server.start()\n"
        "print(server.proc.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    argv = [sys.executable, "-c", script, cfg.store.uri, *extra, f"service.vllm_port={port}"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        keeper = int(proc.stdout.readline())
        assert len(_group_alive(keeper)) >= 2  # the keeper and vLLM
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 60
        while _group_alive(keeper) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group_alive(keeper), _group_alive(keeper)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
