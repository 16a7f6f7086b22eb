"""Real servers on loopback for the scale-out tests: an S3-compatible server (moto's standalone
`moto_server`) and an MLflow tracking server (`mlflow server`), each a subprocess on 127.0.0.1 with
an ephemeral port, each stopped by the fixture that started it (tests/conftest.py).

The commands are the ones the README's "Scaling out" section shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
# Credentials for the loopback S3 server only (moto accepts any); the usual AWS variables, as a
# user's real ones would be given.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "sisa-test",
    "AWS_SECRET_ACCESS_KEY": "sisa-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as e:  # refused while starting; an HTTP error status means it answers
            if getattr(e, "code", None) is not None:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:g}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def aws_env() -> Iterator[None]:
    """The S3 credentials in os.environ for the block (Ray workers started inside inherit them)."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class S3Server:
    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def store_uri(self, bucket: str, prefix: str) -> str:
        return f"s3://{bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"])

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out, client = [], self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def mirror(self, bucket: str, dest: Path) -> list[Path]:
        """Every object of the bucket downloaded under `dest` (the test's own tmp_path), for the
        leak scanner, which reads files."""
        client, out = self.client(), []
        for key in self.keys(bucket):
            path = dest / bucket / key.rstrip("/")
            if key.endswith("/"):  # a folder marker pyarrow writes
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            out.append(path)
        return out


@contextmanager
def s3_server(workdir: Path) -> Iterator[S3Server]:
    """`moto_server -H 127.0.0.1 -p PORT`: an S3-compatible server held in memory."""
    port = free_port()
    log = workdir / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, "moto_server")
        yield S3Server(port, log)
    finally:
        _stop(proc)


@dataclass
class MlflowServer:
    port: int
    backend: Path
    artifacts: Path
    log: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.backend}"


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[MlflowServer]:
    """`mlflow server --host 127.0.0.1 --port PORT --backend-store-uri sqlite:///...
    --artifacts-destination ...`: one worker, its own database and artifact root under `workdir`."""
    port = free_port()
    root = workdir / "mlflow-server"
    root.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(port, root / "mlflow.db", root / "artifacts", workdir / "mlflow-server.log")
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        server.backend_uri,
        "--artifacts-destination",
        str(server.artifacts),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(server.log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        _wait_http(f"{server.uri}/health", proc, "mlflow server", timeout_s=120)
        yield server
    finally:
        _stop_group(proc)
        shutil.rmtree(root / "mlruns", ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """mlflow server runs its workers as children: stop the whole session it leads."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass


# -- a Ray cluster of two nodes on this machine -------------------------------------------------------
# `ray start` turns token authentication on for a new cluster; the driver (sisa) connects without
# a token, so the loopback test cluster runs with it off (a real cluster keeps its token and gives
# it to the driver through RAY_AUTH_TOKEN or ~/.ray/auth_token).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def ray_auth_disabled() -> Iterator[None]:
    """This driver talks to the loopback test cluster without token auth for the block. Ray
    caches the mode it read in its config when it starts; afterwards the config is read again
    from the environment, or every later embedded Ray of this process (which turns token auth on)
    would be refused with "RAY_AUTH_MODE is currently 'disabled'"."""
    from ray._raylet import Config

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        Config.initialize("")


# A 2-core machine shared with other work can starve a raylet for seconds: the head's GCS gives a
# node 30 s per health check and 10 misses before it declares the node dead (a node that is
# killed is noticed at once through its dead workers all the same).
RAY_HEAD_ENV = {"RAY_health_check_timeout_ms": "30000", "RAY_health_check_failure_threshold": "10"}


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the node: `ray start --block` and every process it started (raylet, workers)."""
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@dataclass
class RayCluster:
    address: str
    temp_dir: Path
    nodes: dict[str, RayNode]
    env: dict[str, str]
    markers: Path | None = None  # set by the fixture: see tests/conftest.py
    node_tmp: Path | None = None

    def start_worker(self) -> RayNode:
        """`ray start --address=HEAD --num-cpus=1 --resources='{"node_worker": 1}' --block`."""
        node = _ray_node("worker", ["--address", self.address], self.env, self.temp_dir)
        self.nodes["worker"] = node
        _wait_nodes(self.address, 2)
        return node

    def node_ids(self) -> dict[str, str]:
        """name → Ray node id of the live nodes (read from the cluster, as a driver would)."""
        out = subprocess.run(
            [sys.executable, "-c", _LIST_NODES, self.address],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **RAY_ENV},
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


_LIST_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({("head" if "node_head" in n["Resources"] else "worker"): n["NodeID"] for n in nodes}))
"""


def _ray_node(name: str, where: list[str], env: dict[str, str], temp_dir: Path) -> RayNode:
    log = temp_dir.parent / f"ray-{name}.log"
    cmd = [
        str(BIN / "ray"),
        "start",
        *where,
        "--num-cpus=1",
        f'--resources={{"node_{name}": 1}}',
        "--object-store-memory=100000000",
        "--disable-usage-stats",
        "--block",
    ]
    if name == "head":
        cmd += ["--include-dashboard=false", f"--temp-dir={temp_dir}"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return RayNode(name, proc, log)


def _wait_nodes(address: str, count: int, timeout_s: float = 120) -> None:
    code = f"""
import sys, time, ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + {timeout_s}
while sum(n["Alive"] for n in ray.nodes()) < {count}:
    if time.monotonic() > deadline:
        sys.exit(f"only {{sum(n['Alive'] for n in ray.nodes())}} of {count} Ray nodes came up")
    time.sleep(0.5)
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
        env={**os.environ, **RAY_ENV},
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-500:]


@contextmanager
def ray_cluster(extra_env: dict[str, str]) -> Iterator[RayCluster]:
    """A head and a worker node, one CPU each (so two shard jobs run one on each), started as
    `ray start --head --port=PORT ...` and `ray start --address=127.0.0.1:PORT ...`. Their
    environment carries `extra_env` (the repository on PYTHONPATH, the S3 credentials), as a
    real cluster's nodes would be set up. Every node is SIGKILLed at the end."""
    import tempfile

    # A short folder: Ray's unix sockets live under it (107 characters at most).
    temp_dir = Path(tempfile.mkdtemp(prefix="sisa-ray-", dir="/tmp")) / "r"
    temp_dir.mkdir()
    port = free_port()
    env = {**os.environ, **RAY_ENV, **extra_env}
    address = f"127.0.0.1:{port}"
    cluster = RayCluster(address, temp_dir, {}, env)
    try:
        cluster.nodes["head"] = _ray_node(
            "head",
            ["--head", f"--port={port}", "--node-ip-address=127.0.0.1"],
            {**env, **RAY_HEAD_ENV, "SISA_TEST_NODE": "head"},
            temp_dir,
        )
        _wait_nodes(address, 1)
        cluster.env = {**env, "SISA_TEST_NODE": "worker"}
        cluster.start_worker()
        yield cluster
    finally:
        for node in reversed(list(cluster.nodes.values())):
            node.kill()
        shutil.rmtree(temp_dir.parent, ignore_errors=True)
