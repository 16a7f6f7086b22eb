"""A Ray worker SIGKILLed in the middle of a shard job: bounded retries, then a clear error.

Real embedded Ray, real worker processes that kill themselves with SIGKILL (as the OOM killer
would). With `scheduler.max_retries=1` the job runs again on a fresh worker and the result is the
result an undisturbed run gives; with 0 the run fails with a `ShardJobError` naming the shard;
the retry budget is bounded. Through the train pipeline: a failed shard job commits no version,
and a retried one commits exactly one version whose checkpoints are those of a serial run.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ray.exceptions import RayError
from sisa.pipelines import ingest, train
from sisa.storage import layout
from sisa.storage.errors import ShardJobError
from sisa.storage.store import Store

from sisa.config import SchedulerConfig
from sisa.data.synthetic import write_jsonl
from sisa.lineage import checkpoints, versions
from sisa.training import run as training
from sisa.training import scheduler
from sisa.training.shard_job import ShardTask, train_shard
from tests.helpers import REPO, cli_args, make_cfg, run_cli, tree_digest
from tests.reliability.helpers import SLICES, people

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Job:
    shard_id: int
    marker_dir: str
    die_on: tuple[int, ...] = (1,)
    die_times: int = 1


def attempts(job: Job) -> list[str]:
    path = Path(job.marker_dir) / f"shard-{job.shard_id}.attempts"
    return path.read_text().split() if path.exists() else []


def die_then_work(job: Job) -> int:
    """Record the attempt; on the first `die_times` attempts of the chosen shards, SIGKILL the worker."""
    with open(Path(job.marker_dir) / f"shard-{job.shard_id}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    if job.shard_id in job.die_on and len(attempts(job)) <= job.die_times:
        os.kill(os.getpid(), signal.SIGKILL)
    return job.shard_id * 10


def train_shard_killed_once_mid_job(task: ShardTask):
    """The real shard job, but the first attempt at shard 1 dies right after its first slice's
    checkpoint is saved, more slices to go (the trainer's own fault-injection stage)."""
    marker = Path(task.store_uri).parent / f"killed-shard-{task.shard_id}"
    if task.shard_id == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.environ["SISA_FAULT"] = "train-between-slices"
    else:
        os.environ.pop("SISA_FAULT", None)
    return train_shard(task)


@pytest.fixture(scope="module", autouse=True)
def embedded_ray():
    """Our own embedded Ray for this module. Workers import the jobs above by this module's
    name, so the repository root goes on PYTHONPATH before Ray starts its raylet."""
    scheduler.shutdown_ray()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
        mp.delenv("SISA_FAULT", raising=False)
        yield
        scheduler.shutdown_ray()


def ray_cfg(max_retries: int) -> SchedulerConfig:
    return SchedulerConfig(backend="ray", num_cpus=2, threads_per_task=1, max_retries=max_retries)


# -- the scheduler ----------------------------------------------------------------------------------------
def test_a_killed_worker_is_retried_and_the_job_succeeds(tmp_path):
    jobs = [Job(i, str(tmp_path)) for i in range(3)]
    assert scheduler.run_shard_jobs(die_then_work, jobs, ray_cfg(max_retries=1)) == [0, 10, 20]
    assert len(attempts(jobs[1])) == 2, "shard 1: one killed attempt, one retry"
    assert len(set(attempts(jobs[1]))) == 2, "the retry ran in a new worker process"
    assert [len(attempts(j)) for j in (jobs[0], jobs[2])] == [1, 1]


def test_without_retries_a_killed_worker_fails_naming_the_shard(tmp_path):
    jobs = [Job(i, str(tmp_path)) for i in range(3)]
    with pytest.raises(ShardJobError) as info:
        scheduler.run_shard_jobs(die_then_work, jobs, ray_cfg(max_retries=0))
    err = info.value
    assert err.shard_ids == [1]
    assert "shard_id 1" in err.message and "the other shards' jobs completed" in err.message
    assert isinstance(err.errors[1], RayError)
    assert [len(attempts(j)) for j in jobs] == [1, 1, 1]


def test_retries_are_bounded_by_the_config(tmp_path):
    jobs = [Job(i, str(tmp_path), die_on=(1,), die_times=99) for i in range(2)]
    with pytest.raises(ShardJobError) as info:
        scheduler.run_shard_jobs(die_then_work, jobs, ray_cfg(max_retries=1))
    assert info.value.shard_ids == [1]
    assert [len(attempts(j)) for j in jobs] == [1, 2], "1 attempt + max_retries=1 retry, no more"


# -- the train pipeline ------------------------------------------------------------------------------------
@pytest.fixture
def pending_store(trained_store, tmp_path) -> Path:
    """The template store (version 1) plus new records: every shard has slices to train."""
    rows = people(16, seed=9, start=800)
    ingest.run(make_cfg(trained_store, *SLICES), [str(write_jsonl(rows, tmp_path / "more.jsonl"))])
    return trained_store


def test_a_failed_shard_job_commits_nothing_and_a_rerun_commits_once(pending_store, monkeypatch):
    root = pending_store
    monkeypatch.setattr(training, "train_shard", train_shard_killed_once_mid_job)
    state = tree_digest(root / layout.VERSIONS), (root / layout.CURRENT).read_bytes()

    with pytest.raises(ShardJobError) as info:
        train.run(make_cfg(root, *SLICES, "scheduler.max_retries=0", backend="ray"))
    assert info.value.shard_ids == [1]
    assert (tree_digest(root / layout.VERSIONS), (root / layout.CURRENT).read_bytes()) == state
    store = Store.open(str(root))
    assert store.current_version() == 1 and [v.model_version for v in versions.all_versions(store)] == [1]

    res = train.run(make_cfg(root, *SLICES, "scheduler.max_retries=0", backend="ray"))
    assert res.model_version == 2
    assert [v.model_version for v in versions.all_versions(Store.open(str(root)))] == [1, 2]
    code, out, err = run_cli("verify", "--replay", *cli_args(root, *SLICES))
    assert code == 0 and "verified" in out, out + err


def test_a_job_retried_after_its_worker_died_mid_job_gives_the_undisturbed_result(pending_store, tmp_path, monkeypatch):
    root = pending_store
    serial_root = tmp_path / "serial"
    shutil.copytree(root, serial_root)
    serial = train.run(make_cfg(serial_root, *SLICES))

    monkeypatch.setattr(training, "train_shard", train_shard_killed_once_mid_job)
    res = train.run(make_cfg(root, *SLICES, "scheduler.max_retries=1", backend="ray"))
    assert (root.parent / "killed-shard-1").exists(), "the first attempt at shard 1 should have died"
    assert res.model_version == serial.model_version == 2
    assert [v.model_version for v in versions.all_versions(Store.open(str(root)))] == [1, 2]

    ours = versions.shard_checkpoints(versions.current(Store.open(str(root))))
    theirs = versions.shard_checkpoints(versions.current(Store.open(str(serial_root))))
    assert ours == theirs  # content addresses: same parents, lineage and fingerprints
    for shard, cid in ours.items():
        a = checkpoints.load_adapter_tensors(checkpoints.open_checkpoint(Store.open(str(root)), cid))
        b = checkpoints.load_adapter_tensors(checkpoints.open_checkpoint(Store.open(str(serial_root)), cid))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"shard {shard} differs"
