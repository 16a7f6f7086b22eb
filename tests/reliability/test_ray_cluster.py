"""Shard jobs on a Ray cluster of two nodes (README, "Scaling out"), with the store on an S3 server
so that every node reaches it.

A head and a worker node are started with `ray start` on this machine (one CPU each, so two shard
jobs run one on each node); the driver attaches with `scheduler.address`. The jobs record the node
they ran on, and their adapters are the bytes a serial run on a local store writes. Then the
worker node is SIGKILLed (raylet, workers and all) while its shard job is in the middle of its
slices: with `scheduler.max_retries=1` the job runs again on the head and the version is committed
once, identical to the serial one; with 0 the run fails naming the shard and commits nothing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sisa.pipelines import train
from sisa.storage.errors import ShardJobError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints, versions
from sisa.training import run as training
from sisa.training import scheduler
from sisa.training.shard_job import ShardTask, train_shard
from tests.helpers import ingest_rows, make_cfg, train_store
from tests.servers import ray_auth_disabled

# One worker under `make test` (tests/conftest.py): the two-node cluster is started once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-two-nodes")]
# 12 people, 24 records: each of the 2 shards gets 3 slices of 4 or more, so a job killed after
# its first slice is truly mid-job.
ROWS = make_people(12, seed=81)
SLICES = "sharding.slice_size=4"


def train_shard_hanging_on_the_worker_node(task: ShardTask):
    """The real shard job; on the worker node it hangs after its first slice's checkpoint (the
    trainer's fault stage), marking where it stopped, until the test kills the node."""
    markers = os.environ.get("SISA_TEST_MARKERS")
    if os.environ.get("SISA_TEST_NODE") == "worker" and markers:
        os.environ["SISA_FAULT"] = "train-between-slices"
        os.environ["SISA_FAULT_HANG"] = str(Path(markers) / f"hanging-shard-{task.shard_id}")
    else:
        os.environ.pop("SISA_FAULT", None)
    return train_shard(task)


@pytest.fixture
def cluster(ray_two_nodes):
    """The session's two-node cluster (tests/conftest.py), with both nodes up."""
    with ray_auth_disabled():
        scheduler.shutdown_ray()
        if ray_two_nodes.nodes["worker"].proc.poll() is not None:
            ray_two_nodes.start_worker()
        yield ray_two_nodes
        scheduler.shutdown_ray()


@pytest.fixture
def markers(cluster) -> Path:
    return cluster.markers


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[int, str]:
    """What a serial run on a local store commits: shard_id → the sha256 of its adapter bytes
    (checkpoint ids differ between stores: each store keys its lineage hashes itself)."""
    _, store = train_store(tmp_path_factory.mktemp("serial"), ROWS, SLICES)
    shards = versions.shard_checkpoints(versions.current(store))
    return {shard: _adapter_sha(store, cid) for shard, cid in shards.items()}


def _adapter_sha(store: Store, cid: str) -> str:
    """The sha256 of the adapter bytes as they are in the store (checked against the manifest)."""
    import hashlib

    rel = f"checkpoints/shard={checkpoints.shard_of(cid):05d}/{cid}/{checkpoints.ADAPTER_WEIGHTS}"
    got = hashlib.sha256(store.fs.read_bytes(rel)).hexdigest()
    assert got == checkpoints.adapter_sha256(store, cid)
    return got


def _cluster_cfg(cluster, uri: str, retries: int):
    return make_cfg(
        uri,
        SLICES,
        f"scheduler.address={cluster.address}",
        f"scheduler.max_retries={retries}",
        "scheduler.threads_per_task=1",
        backend="ray",
    )


def _committed(store: Store) -> dict[str, str]:
    current = versions.current(store)
    return {shard: _adapter_sha(store, cid) for shard, cid in versions.shard_checkpoints(current).items()}


def test_shard_jobs_run_on_both_nodes_and_write_the_serial_bytes(cluster, s3_store, serial, tmp_path, monkeypatch):
    _, _, uri = s3_store
    cfg = _cluster_cfg(cluster, uri, retries=1)
    ingest_rows(cfg, ROWS, tmp_path / "people.jsonl")
    res = train.run(cfg)
    nodes = cluster.node_ids()
    assert {r.node for r in res.trained} == {nodes["head"], nodes["worker"]}, "each node ran one shard job"
    store = Store.open(uri)
    assert _committed(store) == serial
    assert [v.model_version for v in versions.all_versions(store)] == [1]


def _train_and_kill_the_worker(cluster, cfg, markers: Path) -> tuple[object, BaseException | None]:
    out: list = [None, None]

    def run() -> None:
        try:
            out[0] = train.run(cfg)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out[1] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 180
    while not list(markers.glob("hanging-shard-*")):
        assert time.monotonic() < deadline and t.is_alive(), f"no shard job hung on the worker node: {out[1]!r}"
        time.sleep(0.2)
    cluster.nodes["worker"].kill()
    t.join(timeout=300)
    assert not t.is_alive(), "training did not finish after the worker node died"
    return out[0], out[1]


def test_a_job_on_a_killed_node_is_retried_on_the_other_and_committed_once(
    cluster, s3_store, serial, markers, tmp_path, monkeypatch
):
    monkeypatch.setattr(training, "train_shard", train_shard_hanging_on_the_worker_node)
    _, _, uri = s3_store
    cfg = _cluster_cfg(cluster, uri, retries=1)
    ingest_rows(cfg, ROWS, tmp_path / "people.jsonl")
    nodes = cluster.node_ids()
    try:
        res, err = _train_and_kill_the_worker(cluster, cfg, markers)
        assert err is None, f"the retry should have succeeded: {err!r}"
        (hung,) = markers.glob("hanging-shard-*")
        shard = int(hung.name.rsplit("-", 1)[1])
        assert {r.shard_id: r.node for r in res.trained}[shard] == nodes["head"], "the retry ran on the head"
        store = Store.open(uri)
        assert [v.model_version for v in versions.all_versions(store)] == [1], "committed once"
        assert _committed(store) == serial, "the retried job wrote the serial run's bytes"
    finally:
        for m in markers.glob("hanging-shard-*"):
            m.unlink()


def test_without_retries_a_killed_node_fails_naming_the_shard_and_commits_nothing(
    cluster, s3_store, markers, tmp_path, monkeypatch
):
    monkeypatch.setattr(training, "train_shard", train_shard_hanging_on_the_worker_node)
    _, _, uri = s3_store
    cfg = _cluster_cfg(cluster, uri, retries=0)
    ingest_rows(cfg, ROWS, tmp_path / "people.jsonl")
    try:
        res, err = _train_and_kill_the_worker(cluster, cfg, markers)
        (hung,) = markers.glob("hanging-shard-*")
        shard = int(hung.name.rsplit("-", 1)[1])
        assert isinstance(err, ShardJobError), repr(err)
        assert err.shard_ids == [shard] and f"shard_id {shard}" in err.message
        store = Store.open(uri)
        assert versions.all_versions(store) == [] and store.current_version() is None, "nothing committed"
    finally:
        for m in markers.glob("hanging-shard-*"):
            m.unlink()
