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
