"""Shard jobs: run one plain function per shard, serially or as Ray tasks.

This is the only module that imports Ray. A shard job is `fn(task) -> result` where `fn` is a
picklable module-level function and `task` a small picklable object with an int `shard_id`; the
worker reads its own data from the store, so the driver ships only the task. Both backends run
the same function on the same task with the same torch thread count, so their results are
identical (the `serial` backend is for debugging and for tests that need no cluster).

Ray is embedded (a private local instance) unless `scheduler.address` or `RAY_ADDRESS` names a
cluster. The embedded instance never starts the dashboard (and would bind it to 127.0.0.1 if
asked), keeps worker output out of the driver's terminal, and gives workers an offline
environment. It keeps logs and spill files under `ray_temp_dir()`, which a leak scan inspects.
A watchdog process (sisa/training/watchdog.py) started beside it SIGKILLs whatever of it is left
once this process stops Ray or ends in any way, SIGKILL included: Ray 2.60's own agents outlive a
driver that did not shut Ray down.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import ray
import torch
from ray._private import auto_init_hook
from ray.exceptions import RayError, RayTaskError
from tqdm import tqdm

from sisa.config import SchedulerConfig
from sisa.model.base import torch_threads
from sisa.offline import OFFLINE_ENV
from sisa.storage.errors import ConfigError, ShardJobError, SisaError
from sisa.storage.faults import maybe_die
from sisa.training.runtime import DETERMINISM_ENV

T = TypeVar("T")
R = TypeVar("R")

_MIB = 1024 * 1024
# Ray starts a default instance when one of its calls (ray.get, ray.cancel, ...) finds none: a Ray
# without the watchdog and these settings. A shard job that outlived `shutdown_ray()` did just
# that (measured: a second session under a `sisa serve` stopped mid-batch). Only `_ensure_ray`
# starts or attaches Ray.
auto_init_hook.enable_auto_connect = False
# Workers must never reach a hub, phone home or oversubscribe the cores Ray reserved for them, and
# start cuBLAS with its deterministic workspace (set before torch touches CUDA there).
_WORKER_ENV = dict(OFFLINE_ENV) | DETERMINISM_ENV

_session_dir: str | None = None
_watchdog: subprocess.Popen | None = None
_final = False  # shutdown_ray(final=True) was called: no Ray starts again in this process


def run_shard_jobs(fn: Callable[[T], R], tasks: list[T], cfg: SchedulerConfig, desc: str = "shards") -> list[R]:
    """Run `fn(task)` for every task and return the results in task order.

    Every task runs even if another fails, so the error names every failed shard, not just the
    first to finish. Failures raise one `ShardJobError` whose `shard_ids` are the failed shards,
    whose `errors` maps shard_id -> the original exception (unwrapped from Ray, so a `SisaError`
    comes back as itself) and whose `__cause__` is the first failure in task order.
    """
    if not tasks:
        return []
    if cfg.backend == "serial":
        outcomes = _run_serial(fn, tasks, cfg, desc)
    elif cfg.backend == "ray":
        outcomes = _run_ray(fn, tasks, cfg, desc)
    else:
        raise ConfigError([f"`scheduler.backend` should be ray or serial, got {cfg.backend!r}"])
    _raise_failures(tasks, outcomes)
    results = [out for _, out in outcomes]
    show_warnings(tasks, results)
    return results


def show_warnings(tasks: list[Any], results: list[Any]) -> None:
    """Print the warnings each job raised (a result's `warnings`), once each with its shards: a Ray
    worker's own output never reaches the user (`log_to_driver: False`)."""
    shards: dict[str, list[int]] = {}
    for task, result in zip(tasks, results, strict=True):
        for text in getattr(result, "warnings", None) or []:
            shards.setdefault(text, []).append(task.shard_id)
    for text, ids in shards.items():
        print(f"warning from shard job(s) {', '.join(map(str, ids))}: {text}", file=sys.stderr)


def prepare(cfg: SchedulerConfig) -> None:
    """Start (or attach to) Ray now, so that timing a later job does not include the start."""
    if cfg.backend == "ray":
        _ensure_ray(cfg)


def shutdown_ray(final: bool = False) -> None:
    """Disconnect from Ray (and stop the embedded instance); for tests and the CLI's exit.

    Returns once the embedded instance's watchdog has removed whatever Ray left running. With
    `final` (a server shutting down) this process starts no Ray again: a shard job still running
    would otherwise start a new one as its batch fails.
    """
    global _final
    _final = _final or final
    maybe_die("ray-shutdown")
    if ray.is_initialized():
        ray.shutdown()
    _stop_watchdog()


def shutdown_ray_within(timeout_s: float) -> bool:
    """`shutdown_ray()`, given up on after `timeout_s`: True when Ray stopped in time (or was never
    started here). A caller that gets False should end its process at once (`os._exit`): the
    watchdog's pipe then closes and it removes what is left, as after a SIGKILL. The CLI's exit
    goes this way, so a Ctrl-C ends `sisa train` in bounded time even if Ray's own shutdown hangs
    (seen once: a Ctrl-C'd `sisa train` still running 180 s later, not reproduced since)."""
    if not ray.is_initialized() and _watchdog is None:
        return True
    done = threading.Event()

    def stop() -> None:
        try:
            shutdown_ray()
        finally:
            done.set()

    threading.Thread(target=stop, name="sisa-ray-shutdown", daemon=True).start()
    return done.wait(timeout_s)


def ray_temp_dir() -> str | None:
    """The session directory of the Ray this process used (logs, spill files), or None.

    Remembered after `shutdown_ray()` so a leak scan can still look there.
    """
    if ray.is_initialized():
        _remember_session_dir()
    return _session_dir


def _call_with_threads(fn: Callable[[T], R], task: T, threads: int) -> R:
    """Run one shard job with a fixed torch thread count.

    The thread count changes float reduction order, so both backends must use the same one for
    their results to be bit-identical. The previous value is restored for the serial backend,
    which runs inside the caller's process.
    """
    with torch_threads(threads):
        out = fn(task)
    if hasattr(out, "node"):  # a result that records where it ran
        out.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    return out


def _run_serial(fn: Callable[[T], R], tasks: list[T], cfg: SchedulerConfig, desc: str) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    for task in tqdm(tasks, desc=desc, unit="shard", disable=not sys.stderr.isatty()):
        try:
            outcomes.append((True, _call_with_threads(fn, task, cfg.threads_per_task)))
        except Exception as e:  # noqa: BLE001 - every shard's failure is collected and re-raised
            outcomes.append((False, e))
    return outcomes


def _run_ray(fn: Callable[[T], R], tasks: list[T], cfg: SchedulerConfig, desc: str) -> list[tuple[bool, Any]]:
    _ensure_ray(cfg)
    remote = ray.remote(
        num_cpus=cfg.threads_per_task,
        num_gpus=1 if torch.cuda.is_available() else 0,
        max_retries=cfg.max_retries,
        retry_exceptions=False,
    )(_call_with_threads)
    refs = [remote.remote(fn, task, cfg.threads_per_task) for task in tasks]
    index = {ref: i for i, ref in enumerate(refs)}
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(refs)
    pending = list(refs)
    try:
        with tqdm(total=len(refs), desc=desc, unit="shard", disable=not sys.stderr.isatty()) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        outcomes[index[ref]] = (True, ray.get(ref))
                    except RayError as e:
                        outcomes[index[ref]] = (False, _unwrap(e))
                    bar.update(1)
    except BaseException:
        # Ctrl-C or a driver-side failure: do not leave shard jobs running on the cluster.
        for ref in pending:
            ray.cancel(ref)
        raise
    return outcomes


def _unwrap(error: BaseException) -> BaseException:
    """The exception the task raised, not Ray's wrapper, so a SisaError keeps its type.

    A dead worker (WorkerCrashedError) or an unpicklable exception stays a RayError.
    """
    while isinstance(error, RayTaskError) and error.cause is not None and error.cause is not error:
        error = error.cause
    return error


def _raise_failures(tasks: list[Any], outcomes: list[tuple[bool, Any]]) -> None:
    failed = {tasks[i].shard_id: out for i, (ok, out) in enumerate(outcomes) if not ok}
    if not failed:
        return
    ids = list(failed)
    first = failed[ids[0]]
    rest = " (the other shards' jobs completed)" if len(ids) < len(tasks) else ""
    err = ShardJobError(
        f"{len(ids)} of {len(tasks)} shard job(s) failed (shard_id {', '.join(map(str, ids))}); "
        f"first error: {type(first).__name__}: {_message(first)}. Fix the cause and rerun{rest}.",
        shard_ids=ids,
        errors=failed,
    )
    raise err from first


def _message(error: BaseException) -> str:
    text = error.message if isinstance(error, SisaError) else str(error)
    return text.strip().rstrip(".")


def _ensure_ray(cfg: SchedulerConfig) -> None:
    """Attach to a cluster or start the embedded Ray; reuse a Ray already up in this process."""
    if not ray.is_initialized():
        if _final:
            raise SisaError("this process is shutting down: it starts no Ray; the work resumes at the next start")
        # Read by the Ray processes this driver spawns (embedded case), not only by workers.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray 2.60 turns token auth on for a new local Ray (token in ~/.ray/auth_token) and
        # warns about it on every init. Setting RAY_AUTH_MODE=token ourselves breaks the start
        # (the driver cached "disabled" at import), so only the warning is muted.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        env_vars = dict(_WORKER_ENV)
        env_vars["OMP_NUM_THREADS"] = env_vars["MKL_NUM_THREADS"] = str(cfg.threads_per_task)
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": env_vars},
        }
        address = cfg.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            _check_reachable(address, cfg.connect_timeout_s)
            ray.init(address=address, **common)
        else:
            _start_watchdog()
            # "local", not None: None would attach to whatever `ray start` cluster another
            # process on this machine left in /tmp/ray/ray_current_cluster.
            try:
                ray.init(
                    address="local",
                    num_cpus=cfg.num_cpus or os.cpu_count() or 1,
                    object_store_memory=cfg.object_store_mb * _MIB,
                    dashboard_host="127.0.0.1",
                    **common,
                )
            except BaseException:
                _stop_watchdog()
                raise
            _remember_session_dir()
            _tell_watchdog(f"session {_session_dir}")
    _remember_session_dir()
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < cfg.threads_per_task:
        raise ConfigError(
            [
                f"`scheduler.threads_per_task` should be at most the Ray cluster's CPUs ({cpus:g}), "
                f"got {cfg.threads_per_task}; a shard job asking for more would never be scheduled"
            ]
        )


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast, naming the address, when nothing answers there: `ray.init` on an unreachable
    address retries for many minutes with only log lines to show for it. "auto" (the cluster a
    `ray start` on this machine recorded) is left to Ray."""
    hostport = address.removeprefix("ray://")
    if hostport == "auto" or "://" in hostport:
        return
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            [f"`scheduler.address` (or RAY_ADDRESS) should be host:port, ray://host:port or auto, got {address!r}"]
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SisaError(
            f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({e.strerror or e}); "
            "check that `ray start --head` runs there and the port is open, or unset scheduler.address and RAY_ADDRESS "
            "to use the embedded Ray"
        ) from None


def _start_watchdog() -> None:
    """The watchdog of the embedded Ray about to start (sisa/training/watchdog.py): standard
    library only, in a session of its own, reading a pipe only this process can write to."""
    global _watchdog
    _stop_watchdog()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.py")
    _watchdog = subprocess.Popen(
        [sys.executable, "-I", "-S", script, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _tell_watchdog(line: str) -> None:
    if _watchdog is not None and _watchdog.stdin is not None:
        try:
            _watchdog.stdin.write(line.encode() + b"\n")
            _watchdog.stdin.flush()
        except OSError:  # it is gone: nothing to tell
            pass


def _stop_watchdog(timeout_s: float = 15.0) -> None:
    """Close its pipe (it reaps what is left of the Ray it watched) and wait for it to end."""
    global _watchdog
    if _watchdog is None:
        return
    proc, _watchdog = _watchdog, None
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _remember_session_dir() -> None:
    global _session_dir
    ctx = ray.get_runtime_context()
    _session_dir = os.path.join(ctx.get_temp_dir(), ctx.get_session_name())
