"""The scheduler runs shard jobs serially or on real Ray (embedded or an attached cluster).

One embedded Ray serves the module; the cluster test shuts it down first and starts its own
`ray start --head --block` in a private temp dir, so nothing here attaches to (or stops) a Ray
that another process on this machine owns.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sisa.storage.errors import ConfigError, ShardJobError, ValidationError

from sisa.config import SchedulerConfig
from sisa.training.scheduler import ray_temp_dir, run_shard_jobs, shutdown_ray

RAY_BIN = Path(sys.executable).parent / "ray"


@dataclass(frozen=True)
class Task:
    shard_id: int
    size: int = 48


def seeded_matmul(task: Task) -> torch.Tensor:
    """Deterministic per shard: the seed comes from shard_id, never from time or order."""
    g = torch.Generator().manual_seed(1000 + task.shard_id)
    a = torch.randn(task.size, task.size, generator=g)
    return (a @ a.T).tanh() @ a


def fail_on_odd(task: Task) -> int:
    if task.shard_id == 1:
        raise ValidationError("shard 1 has a malformed slice")
    if task.shard_id == 3:
        raise RuntimeError("shard 3 ran out of luck")
    return task.shard_id


def die_on_one(task: Task) -> int:
    if task.shard_id == 1:
        os._exit(1)  # the worker process vanishes, as under the OOM killer
    return task.shard_id


def report_threads(task: Task) -> int:
    return torch.get_num_threads()


def report_env(task: Task) -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MKL_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}


TASKS = [Task(i) for i in range(4)]
SERIAL = SchedulerConfig(backend="serial")
RAY = SchedulerConfig(backend="ray", num_cpus=2, threads_per_task=1, max_retries=0)


def _worker_pythonpath() -> str:
    """Ray workers import the jobs below by this module's name, as pytest imported it
    (`test_scheduler` or `tests.sisa.training.test_scheduler`), so they need its root on their path;
    Ray itself adds only the driver's cwd."""
    root = Path(__file__).resolve().parent
    for _ in range(__name__.count(".")):
        root = root.parent
    return os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="module")
def embedded_ray():
    shutdown_ray()
    with pytest.MonkeyPatch.context() as mp:
        # Read when the embedded Ray starts its raylet, whose environment the workers inherit.
        mp.setenv("PYTHONPATH", _worker_pythonpath())
        yield
        shutdown_ray()


def test_serial_runs_in_task_order():
    out = run_shard_jobs(seeded_matmul, TASKS, SERIAL)
    assert len(out) == 4
    assert torch.equal(out[2], seeded_matmul(TASKS[2]))
    assert run_shard_jobs(seeded_matmul, [], SERIAL) == []


def test_serial_collects_every_failure():
    with pytest.raises(ShardJobError) as info:
        run_shard_jobs(fail_on_odd, TASKS, SERIAL)
    err = info.value
    assert err.shard_ids == [1, 3]
    assert "shard_id 1, 3" in err.message and "ValidationError" in err.message
    assert isinstance(err.__cause__, ValidationError)


def test_the_failed_shards_error_map_survives_pickling():
    """Ray pickles an exception that crosses a process; the per-shard map must come through."""
    with pytest.raises(ShardJobError) as info:
        run_shard_jobs(fail_on_odd, TASKS, SERIAL)
    back = pickle.loads(pickle.dumps(info.value))
    assert back.shard_ids == [1, 3] and back.message == info.value.message
    assert sorted(back.errors) == [1, 3]
    assert type(back.errors[1]) is ValidationError and back.errors[1].message == "shard 1 has a malformed slice"
    assert type(back.errors[3]) is RuntimeError and str(back.errors[3]) == "shard 3 ran out of luck"


@pytest.mark.slow
def test_ray_matches_serial_bit_for_bit(embedded_ray):
    serial = run_shard_jobs(seeded_matmul, TASKS, SERIAL)
    remote = run_shard_jobs(seeded_matmul, TASKS, RAY)
    assert len(remote) == len(serial)
    for a, b in zip(serial, remote, strict=True):
        assert torch.equal(a, b)
    assert run_shard_jobs(report_threads, TASKS[:2], RAY) == [1, 1]
    env = run_shard_jobs(report_env, TASKS[:1], RAY)[0]
    assert env == {"MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    session = ray_temp_dir()
    assert session is not None and Path(session).is_dir()


@pytest.mark.slow
def test_ray_task_error_names_failed_shards_and_keeps_sisa_error_type(embedded_ray):
    with pytest.raises(ShardJobError) as info:
        run_shard_jobs(fail_on_odd, TASKS, RAY)
    err = info.value
    assert err.shard_ids == [1, 3]
    assert "ValidationError: shard 1 has a malformed slice" in err.message
    # Unwrapped from Ray's RayTaskError: the original classes, not Ray's dual subclasses.
    assert type(err.errors[1]) is ValidationError
    assert type(err.errors[3]) is RuntimeError
    assert type(err.__cause__) is ValidationError


@pytest.mark.slow
def test_ray_dead_worker_names_the_shard(embedded_ray):
    with pytest.raises(ShardJobError) as info:
        run_shard_jobs(die_on_one, TASKS[:3], RAY)
    assert info.value.shard_ids == [1]
    assert "WorkerCrashedError" in info.value.message


@pytest.mark.slow
def test_ray_refuses_jobs_wider_than_the_cluster(embedded_ray):
    with pytest.raises(ConfigError, match="threads_per_task"):
        run_shard_jobs(seeded_matmul, TASKS, SchedulerConfig(backend="ray", threads_per_task=64))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(embedded_ray, monkeypatch):
    """A separate single-node Ray started with `ray start --head --block`.

    `ray stop` is not used to end it: it kills every Ray process on the machine by name,
    including other users'. SIGTERM to the blocking `ray start` shuts down exactly its own
    processes; its process group is killed only as a last resort.
    """
    shutdown_ray()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _free_port()
    # Short path: Ray's unix sockets live under it and sun_path is limited to ~107 bytes.
    temp = tempfile.mkdtemp(prefix="sisa-ray-", dir="/tmp")
    log = Path(temp) / "ray-start.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = _worker_pythonpath()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(RAY_BIN),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp}",
                "--block",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "block forever" not in log.read_text():
            assert proc.poll() is None, f"ray start exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ray start timed out:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", temp
    finally:
        shutdown_ray()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_attaches_to_a_cluster(ray_cluster, monkeypatch):
    address, temp = ray_cluster
    serial = run_shard_jobs(seeded_matmul, TASKS, SERIAL)

    monkeypatch.setenv("RAY_ADDRESS", address)
    via_env = run_shard_jobs(seeded_matmul, TASKS, RAY)
    assert ray_temp_dir().startswith(temp)
    shutdown_ray()
    monkeypatch.delenv("RAY_ADDRESS")

    via_cfg = run_shard_jobs(seeded_matmul, TASKS, SchedulerConfig(backend="ray", address=address))
    assert ray_temp_dir().startswith(temp)
    for a, b, c in zip(serial, via_env, via_cfg, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.slow
def test_sisa_train_runs_on_a_cluster_through_ray_address(ray_cluster, monkeypatch, tmp_path):
    """The whole `sisa train` on a separate Ray head, identical to a serial run in another store."""
    from safetensors.torch import load_file
    from sisa.pipelines import ingest, train
    from sisa.storage.store import Store

    from sisa.data.synthetic import make_people, write_jsonl
    from sisa.lineage import checkpoints, versions
    from tests.helpers import make_cfg

    address, temp = ray_cluster
    people = write_jsonl(make_people(8, seed=11), tmp_path / "people.jsonl")
    adapters_by_store = []
    for name, backend in (("cluster", "ray"), ("serial", "serial")):
        cfg = make_cfg(tmp_path / name, backend=backend)
        ingest.run(cfg, [str(people)])
        if backend == "ray":
            monkeypatch.setenv("RAY_ADDRESS", address)
        assert train.run(cfg).model_version == 1
        if backend == "ray":
            assert ray_temp_dir().startswith(temp)
            shutdown_ray()
            monkeypatch.delenv("RAY_ADDRESS")
        store = Store.open(cfg.store.uri)
        shards = versions.shard_checkpoints(versions.current(store))
        adapters_by_store.append(
            {
                s: load_file(f"{checkpoints.open_checkpoint(store, c).path}/adapter_model.safetensors")
                for s, c in shards.items()
            }
        )
    on_cluster, serial = adapters_by_store
    assert on_cluster.keys() == serial.keys()
    for s in serial:
        assert all(torch.equal(on_cluster[s][k], serial[s][k]) for k in serial[s])


def test_an_unreachable_cluster_address_fails_fast_naming_it():
    """ray.init on an address where nothing listens retries for many minutes; sisa names it."""
    from sisa.storage.errors import SisaError

    shutdown_ray()  # a Ray already up in this process would be reused, not connected to
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(SisaError, match=f"cannot reach the Ray cluster at {address}"):
        run_shard_jobs(seeded_matmul, TASKS, SchedulerConfig(backend="ray", address=address, connect_timeout_s=2))
    assert time.monotonic() - started < 60


def test_a_malformed_cluster_address_is_a_config_error():
    shutdown_ray()
    with pytest.raises(ConfigError, match="host:port"):
        run_shard_jobs(seeded_matmul, TASKS, SchedulerConfig(backend="ray", address="no-port-here"))
