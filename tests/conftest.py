"""Test-wide settings: offline by construction, small thread counts, stores under tmp_path; the
trained store most tests start from; real servers on loopback."""

from __future__ import annotations

import os

# Before any heavy import: nothing may reach a hub or phone home.
from sisa import offline  # noqa: E402  (sets nothing heavy; must run before torch loads)

offline.apply()
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


import pytest  # noqa: E402


# -- two workers (`make test`: pytest -n 2 --dist loadgroup) -----------------------------------------
# Each pytest-xdist worker is a process of its own with its own embedded Ray, session servers (the
# `s3`, `mlflow_tracking` and `ray_two_nodes` fixtures: one each per worker, on ports from a
# free-port probe) and tmp_path tree. What they would otherwise share is made theirs here: Ray's
# temp folder (sessions, `session_latest`, `ray_current_cluster`) and, created once before the
# workers start, Ray's auth token. The scans for leftovers and listening sockets look only at
# their own run's processes and session folder, never machine-wide.
def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        _own_ray_tmpdir(config, worker)
    elif getattr(config.option, "numprocesses", None):
        _ray_auth_token_once()


def _own_ray_tmpdir(config: pytest.Config, worker: str) -> None:
    """RAY_TMPDIR: a short folder of this worker's (Ray's unix sockets live under it, 107
    characters at most), removed when the worker ends. A test that names its own keeps it."""
    import shutil
    import tempfile

    if "RAY_TMPDIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix=f"sisa-ray-{worker}-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = folder
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def _ray_auth_token_once() -> None:
    """Ray 2.60 writes ~/.ray/auth_token when the first local Ray of a machine starts, by
    truncating and rewriting the file: two workers starting their first Ray at once could read
    it half written, or each start with a token the other then overwrites. Written here first,
    in the controller, before any worker exists (with Ray's own generator, as Ray would)."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    if path.exists() and path.stat().st_size:
        return
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".auth_token.{os.getpid()}")
    part.write_text(generate_new_authentication_token())
    os.replace(part, path)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`, with a test module as the unit of work unless an `xdist_group` mark
    joins several: a module's fixtures (a trained store, a server, a module's Ray) are set up
    once, in one worker, and a module-scoped fixture that plays its module's tests together
    (tests/reliability/test_leftovers.py: `endings`) sees all of them in its own worker."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    config.option.loadscopereorder = False  # keep the collection's order: LONGEST_FIRST first

    class ModuleOrGroup(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return nodeid.split("@")[-1]
            return nodeid.split("::", 1)[0]

    return ModuleOrGroup(config, log)


# The longest units of work, longest first (`make test` prints each module's seconds at the end:
# "seconds per module"). xdist hands out units in collection order, so a unit of minutes that
# came last (the tour: 3 tests, 4.5 minutes) kept one worker busy alone while the other had
# finished; started first, the short units fill in around them. A module missing here only runs
# later; a name that no longer exists is harmless.
LONGEST_FIRST = (
    "tests/reliability/test_leftovers.py",
    "tests/docs/test_tour.py",
    "tests/pipelines/test_canary.py",
    "tests/sisa/serving/test_vllm_route.py",
    "tests/reliability/test_leaks.py",
    "tests/pipelines/test_forget.py",
    "tests/test_wheel.py",
    "tests/reliability/test_floods.py",
    "tests/pipelines/test_train.py",
    "tests/reliability/test_optimized.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """LONGEST_FIRST's modules first, the rest after in their own order (a stable sort: the tests
    of a module keep theirs). Every worker collects the same order, as xdist requires."""
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Seconds per test module (setup, call and teardown summed): what LONGEST_FIRST is kept from."""
    seconds: dict[str, float] = {}
    for reports in terminalreporter.stats.values():  # "" holds the passed setups and teardowns
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                module = report.nodeid.split("::", 1)[0]
                seconds[module] = seconds.get(module, 0.0) + report.duration
    if len(seconds) > 1:
        terminalreporter.write_sep("=", "seconds per module (the 15 longest)")
        for module, total in sorted(seconds.items(), key=lambda kv: -kv[1])[:15]:
            terminalreporter.write_line(f"{total:8.1f}  {module}")


# -- a trained store (tests/helpers.py: train_store) ---------------------------------------------------
@pytest.fixture
def make_trained_store(tmp_path):
    """`make_trained_store(rows, *overrides, tracking=False, backend="serial")`: tests/helpers.py's
    `train_store` under this test's tmp_path (the store at tmp_path/s, model version 1), returning
    its (cfg, store). The reliability tests train one template store with `train_store` and copy
    it for each test (tests/reliability/conftest.py: `trained_store`)."""
    from functools import partial

    from tests.helpers import train_store

    return partial(train_store, tmp_path)


# -- real servers on loopback (tests/servers.py) ----------------------------------------------------
@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the whole session, with the AWS credential variables set;
    each test makes its own bucket."""
    from tests.servers import aws_env, s3_server

    with aws_env(), s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_store(s3, request):
    """A fresh bucket on the S3 server; returns (server, bucket, store.uri)."""
    import uuid

    bucket = f"sisa-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    return s3, bucket, s3.store_uri(bucket, "store")


@pytest.fixture(scope="session")
def mlflow_tracking(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with its own sqlite backend and artifact root."""
    from tests.servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def ray_two_nodes(s3, tmp_path_factory):
    """A Ray head and a worker node on this machine (tests/servers.py), for the session. Their
    processes import this repository, reach the S3 server (the `s3` fixture set the AWS
    variables) and use their own temp folder (`cluster.node_tmp`, scanned for leaks).
    `SISA_TEST_MARKERS` is where a test's shard job marks that it hangs."""
    from sisa.training.scheduler import shutdown_ray
    from tests.helpers import REPO
    from tests.servers import ray_cluster

    shutdown_ray()
    markers, node_tmp = tmp_path_factory.mktemp("markers"), tmp_path_factory.mktemp("node-tmp")
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    with ray_cluster({"PYTHONPATH": pythonpath, "SISA_TEST_MARKERS": str(markers), "TMPDIR": str(node_tmp)}) as cluster:
        cluster.markers, cluster.node_tmp = markers, node_tmp
        yield cluster
        shutdown_ray()


@pytest.fixture
def ray_auth_off():
    """This driver without Ray token auth for the test (the loopback cluster runs without it);
    Ray's cached mode is read again afterwards (tests/servers.py: ray_auth_disabled)."""
    from tests.servers import ray_auth_disabled

    with ray_auth_disabled():
        yield
