"""What listens on the network: no dashboard, no server of our own, tracking in a file.

- The embedded Ray is started with `include_dashboard=False` (and `dashboard_host=127.0.0.1`
  should anyone turn it on); no Ray process listens on the dashboard port, and Ray's token
  authentication is on, because Ray's own gRPC servers cannot be bound to loopback.
- sisa itself opens no listening socket (train, generate, status with MLflow tracking on), and
  no source file starts a server but `sisa serve`, which binds 127.0.0.1 by default.
- MLflow tracking is a sqlite file inside the store unless a user names a tracking server:
  logging a model version opens no socket.
"""

from __future__ import annotations

import ast
import os
import re

import psutil
import pytest

from sisa.config import SchedulerConfig
from sisa.training import scheduler
from tests.helpers import REPO, cli_args, run_cli
from tests.reliability.helpers import SLICES

pytestmark = pytest.mark.slow
DASHBOARD_PORT = 8265
LOOPBACK = {"127.0.0.1", "::1"}


def listening(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of these processes."""
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [(pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return sorted(out)


def ray_processes() -> set[int]:
    """This process, its children, and every process of the current Ray session."""
    session = os.path.basename(scheduler.ray_temp_dir())
    pids = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        if any(session in part for part in (p.info["cmdline"] or [])):
            pids.add(p.pid)
    return pids


@pytest.fixture(scope="module")
def embedded_ray():
    """Start the embedded Ray the way sisa does, recording the arguments it passes to ray.init."""
    import ray

    scheduler.shutdown_ray()
    calls: list[dict] = []
    real_init = ray.init

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_init(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setattr(scheduler.ray, "init", spy)
        scheduler.prepare(SchedulerConfig(backend="ray", num_cpus=2, threads_per_task=1))
        yield calls
    scheduler.shutdown_ray()


def test_embedded_ray_starts_no_dashboard(embedded_ray):
    (kwargs,) = embedded_ray
    assert kwargs["include_dashboard"] is False
    assert kwargs["dashboard_host"] == "127.0.0.1"
    sockets = listening(ray_processes())
    assert sockets, "Ray's processes should be found listening (GCS, raylet)"
    assert not [s for s in sockets if s[3] == DASHBOARD_PORT], sockets
    # The dashboard's HTTP server, were it running, would be the one process serving web pages.
    assert not [s for s in sockets if "dashboard" in s[1].lower() and s[2] not in LOOPBACK], sockets


def test_ray_ports_that_listen_beyond_loopback_require_ray_token_auth(embedded_ray):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    # Ray 2.60 does listen beyond loopback (see the xfail below), so the protection must be on.
    exposed = [s for s in listening(ray_processes()) if s[2] not in LOOPBACK]
    assert exposed, "Ray's processes should be found listening beyond loopback (GCS, raylet)"
    assert get_authentication_mode() == AuthenticationMode.TOKEN, (
        f"Ray listens on {exposed} without token authentication: anyone on the network could run code"
    )


@pytest.mark.xfail(
    strict=True,
    reason="Ray 2.60 binds its gRPC servers (GCS, raylet, core workers) to all interfaces and has no "
    "option to bind them to loopback; token authentication (checked above) is the protection",
)
def test_embedded_ray_listens_on_loopback_only(embedded_ray):
    exposed = [s for s in listening(ray_processes()) if s[2] not in LOOPBACK]
    assert exposed == []


def test_sisa_itself_starts_no_server(trained_store):
    scheduler.shutdown_ray()  # a Ray driver listens (its core worker); sisa's own code must not

    def ours() -> set[int]:
        # This process and its children: in a full run the session's test servers (the S3
        # server, the Ray test cluster) are children already and listen before any verb runs.
        return {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}

    before = set(listening(ours()))
    args = cli_args(trained_store, *SLICES, tracking=True)
    for argv in (
        ["train", "--from-scratch"],
        ["generate", "--prompt", "Ada", "--max-new-tokens", "2"],
        ["status"],
        ["versions"],
    ):
        code, out, err = run_cli(*argv, *args)
        assert code == 0, out + err
        assert set(listening(ours())) - before == set(), argv
    assert (trained_store / "mlflow.db").exists(), "tracking was on: MLflow ran in-process, on sqlite"


SERVER_CALLS = re.compile(
    r"HTTPServer|ThreadingHTTPServer|socketserver|\.listen\(|\.bind\(\(|\buvicorn\.|import uvicorn|from uvicorn|"
    r"Flask\(|FastAPI\(|serve\.run|"
    r"ray\.serve|start_http_server|mlflow\.server|\"mlflow\",\s*\"(ui|server)\"|0\.0\.0\.0|include_dashboard=True"
)


# `sisa serve` is the one server of ours: the app's package (sisa/service/app.py and its routers), the verb
# that runs it, and the benchmark that starts it on a free loopback port to load it. The benchmarks'
# common module finds such a port the same way (a bind to 127.0.0.1 port 0, closed at once) for the
# vLLM server benchmarks/engine.py starts on loopback (sisa/serving/vllm_server.py passes --host 127.0.0.1).
SERVER_HOMES = {str(p.relative_to(REPO)) for p in (REPO / "sisa" / "service").glob("*.py")} | {
    "pipelines/serve.py",
    "benchmarks/serve.py",
    "benchmarks/_common.py",
}


def test_no_source_file_starts_a_server():
    """Only `sisa serve` starts a server, and it binds loopback unless a user names another host."""
    from sisa.config import ServiceConfig

    assert ServiceConfig().host == "127.0.0.1"
    files = [p for d in ("sisa", "storage", "pipelines", "benchmarks") for p in sorted((REPO / d).rglob("*.py"))]
    assert files
    hits = []
    for path in files:
        source = path.read_text()
        code_only = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        docstrings = {
            n.value.value
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Expr)
            and isinstance(getattr(n, "value", None), ast.Constant)
            and isinstance(n.value.value, str)
        }
        for doc in docstrings:
            code_only = code_only.replace(doc, "")
        rel = str(path.relative_to(REPO))
        hits += [
            f"{rel}: {m.group(0)}"
            for m in SERVER_CALLS.finditer(code_only)
            if rel not in SERVER_HOMES or m.group(0) == "0.0.0.0"
        ]
    assert hits == [], hits


def test_default_tracking_is_a_file_in_the_store_and_opens_no_socket(tmp_path, monkeypatch):
    from sisa.config import TrackingConfig
    from sisa.serving.tracking import Tracker

    def ours() -> set[int]:
        return {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = listening(ours())
    tracker = Tracker(TrackingConfig(experiment="exposure", registered_model="exposure-model"), str(tmp_path))
    assert tracker.uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    out = tracker.log_model_version(1, "train", {"num_shards": 2}, {"loss": 0.5}, {})
    tracker.set_serving_alias(1)
    assert out["registered_version"] and tracker.serving_version() == 1
    assert (tmp_path / "mlflow.db").is_file()
    assert listening(ours()) == before
