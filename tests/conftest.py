"""Test-wide settings: offline by construction, small thread counts, stores under tmp_path."""

from __future__ import annotations

import os

# Before any heavy import: nothing may reach a hub or phone home.
from sisa import offline  # noqa: E402  (sets nothing heavy; must run before torch loads)

offline.apply()
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


# -- real servers on loopback (tests/servers.py) ----------------------------------------------------
import pytest  # noqa: E402


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
