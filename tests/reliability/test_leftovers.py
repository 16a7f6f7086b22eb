"""Nothing left running: however `sisa train`, `forget`, `process`, `verify --replay` or `sisa serve`
ends, no process of the embedded Ray it started is left behind.

The real CLI in a child process of its own session (a Ctrl-C is a SIGINT to the whole process
group, as a terminal sends it), with real embedded Ray under a Ray temp folder of the test's own
(`RAY_TMPDIR`). The run is caught in the middle of its shard jobs (`SISA_FAULT_HANG`: a Ray worker
hangs in a shard job, between two slices) and ended: a normal exit, an exception (a shard job
dies, no retry: `ShardJobError`), Ctrl-C, SIGTERM, and SIGKILL of the sisa process itself. Every
process seen under sisa while it ran (GCS, raylet, the agents, workers, the watchdog) must be gone
afterwards, no process may name the run's Ray session or hold a file open in its folder, and the
raylet's socket there must refuse connections. Ray 2.60 without sisa's watchdog leaves
`ray::DashboardAgent` and `ray::RuntimeEnvAgent` running after a SIGKILL (measured; see
sisa/training/watchdog.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from sisa.pipelines.cli import RAY_STOP_S

from tests.helpers import REPO, cli_args, run_cli
from tests.reliability.helpers import SLICES, people, sisa_env

# All in one worker under `make test` (tests/conftest.py): `endings` plays every test of the
# module that the session selected, so none of them may run in another worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("leftovers")]
RAY_PARTS = ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent")


class Tree(threading.Thread):
    """Every process seen under `pid` while it runs, (pid, create time) → its latest command line
    (Ray's agents rename themselves `ray::...` once up)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.seen, self.done = pid, {}, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for p in psutil.Process(self.pid).children(recursive=True):
                    try:
                        cmd = " ".join(p.cmdline())[:200]
                        if cmd:
                            self.seen[(p.pid, p.create_time())] = cmd
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.1)

    def names(self) -> str:
        return " ".join(cmd.split(" --")[0] for cmd in self.seen.values())


def _alive(pid: int, created: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _holding(folder: str) -> list[str]:
    """Processes that name the folder on their command line or hold a file open under it."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        held = cmd if folder in cmd else ""
        try:
            for fd in os.listdir(f"/proc/{p.pid}/fd"):
                target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
                if target.startswith(folder):
                    held = held or f"{cmd} (open: {target})"
        except OSError:
            pass
        if held:
            out.append(f"{p.pid}: {held[:200]}")
    return out


def _refuses(sock: Path) -> bool:
    if not sock.exists():
        return True
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return True
    return False


def _like_a_terminal_job() -> None:
    """Ctrl-C and Ctrl-\\ as a terminal's foreground job has them. A shell runs a background job
    (`bash .ci/run &`) with both ignored, every process under it inherits that, and Python then
    leaves SIGINT ignored: a Ctrl-C test run there saw `sisa train` ignore its Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Run:
    """One `sisa VERB` in its own session, with its own Ray temp folder. Its output is read as it
    comes (a full pipe would block the run), and a run that does not end in time is sent SIGABRT
    first: `PYTHONFAULTHANDLER` then prints every thread's stack into that output."""

    def __init__(self, tmp: Path, *argv: str, hang: bool, **env: str):
        # A short folder: Ray's unix sockets live under it (107 characters at most).
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="sisa-ray-", dir="/tmp"))
        self.hang = tmp / "hanging"
        extra = {"RAY_TMPDIR": str(self.ray_tmp), "PYTHONFAULTHANDLER": "1", **env}
        if hang:
            extra["SISA_FAULT_HANG"] = str(self.hang)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sisa.pipelines.cli", *argv],
            cwd=REPO,
            env=sisa_env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_like_a_terminal_job,
        )
        self.tree = Tree(self.proc.pid)
        self.chunks: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.chunks.append(line)

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    def wait_hanging(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.hang.exists():
            assert self.proc.poll() is None, f"sisa exited {self.proc.returncode}: {self.output[-3000:]}"
            assert time.monotonic() < deadline, "no shard job reached the hanging stage"
            time.sleep(0.2)
        time.sleep(1.0)  # the agents and workers are all up by now; the tree has seen them

    def end(self, how: str) -> int:
        if how == "ctrl-c":
            os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal sends its foreground group
        elif how in ("sigterm", "sigkill"):
            self.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        try:
            code = self.proc.wait(180)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
            self.proc.kill()
            self.reader.join(10)
            stacks = self.output[-8000:]
            raise AssertionError(f"sisa did not end within 180 s of {how}; its threads then:\n{stacks}") from None
        self.reader.join(30)
        return code

    def sessions(self) -> list[Path]:
        """The Ray sessions this run started (Ray names them after the driver's pid)."""
        return sorted(self.ray_tmp.glob(f"ray/session_*_{self.proc.pid}"))

    def assert_nothing_left(self, timeout_s: float = 30) -> None:
        self.tree.done.set()
        (session,) = self.sessions()  # one Ray, started once
        deadline = time.monotonic() + timeout_s
        while True:
            left = [f"{pid}: {cmd[:160]}" for (pid, created), cmd in self.tree.seen.items() if _alive(pid, created)]
            held = _holding(str(session))
            if not left and not held:
                break
            assert time.monotonic() < deadline, f"left running {timeout_s:g} s after sisa ended: {left + held}"
            time.sleep(0.5)
        assert _refuses(session / "sockets" / "raylet"), "the raylet's socket still answers"

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


# -- two endings at a time ----------------------------------------------------------------------------
# One ending keeps about one of this machine's two cores busy (measured: 22 s of CPU over the 21 s
# of a `sisa forget` run, mostly one process importing or starting at a time), and the 18 of them
# one after another took 10 minutes beside a full suite run (7 two at a time, measured alike). So the
# selected endings of this module run two at a time, each in threads of its own, with its own
# store copy, Ray temp folder, process session and hang marker; each test waits for its own
# ending and fails with that ending's assertion. What prepares an ending in this process
# (`run_cli`: it redirects the process's stdout) runs in the main thread, before its ending is
# handed to a thread.
AT_ONCE = 2


class Ending(NamedTuple):
    """One ending to run: its test's node id, the scenario (called in a thread) and its folder."""

    nodeid: str
    scenario: Callable[[Callable[..., Run]], None]
    tmp: Path


def _starter(tmp: Path, runs: list[Run]) -> Callable[..., Run]:
    def start(*argv: str, hang: bool = False, **env: str) -> Run:
        runs.append(Run(tmp, *argv, hang=hang, **env))
        return runs[-1]

    return start


def _play(ending: Ending, runs: list[Run]) -> None:
    try:
        ending.scenario(_starter(ending.tmp, runs))
    finally:
        for r in runs:
            r.cleanup()


@pytest.fixture(scope="module")
def endings(request, template_store, tmp_path_factory):
    """node id → the Future of its ending, for every test of this module that this session runs:
    prepared in order (the longest first), played `AT_ONCE` at a time. The ones not yet started
    when the module ends early (`-x`, a failure) are cancelled; the running ones end within their
    own time limits, or at once when the module was interrupted (their children are killed)."""
    items = [i for i in request.session.items if getattr(i, "module", None) is request.module]
    items.sort(key=lambda i: i.callspec.params.get("how") != "ray-stop-hangs")  # 30 s of it is waiting
    pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="ending")
    futures, runs = {}, {}
    try:
        for item in items:
            tmp = tmp_path_factory.mktemp("ending")
            root = tmp / "s"
            shutil.copytree(template_store, root)
            try:
                scenario = PREPARE[item.originalname](root, tmp, **item.callspec.params)
            except Exception as e:  # this ending's own failure, not the others'
                futures[item.nodeid] = Future()
                futures[item.nodeid].set_exception(e)
                continue
            runs[item.nodeid] = []
            futures[item.nodeid] = pool.submit(_play, Ending(item.nodeid, scenario, tmp), runs[item.nodeid])
        yield futures
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for nodeid, future in futures.items():
            if not future.done():  # the module stopped before its test waited for it (Ctrl-C)
                for r in list(runs.get(nodeid, ())):
                    r.cleanup()
        pool.shutdown(wait=True)


def _ended(endings, request) -> None:
    """This test's ending, waited for: its assertion error (or any error) is raised here."""
    endings[request.node.nodeid].result()


RAY = ("scheduler.backend=ray", "scheduler.num_cpus=2", "scheduler.max_retries=0")


@pytest.mark.parametrize("how", ["exit", "exception", "ctrl-c", "sigterm", "sigkill", "ray-stop-hangs"])
def test_sisa_train_leaves_no_ray_process_however_it_ends(how, endings, request):
    """`ray-stop-hangs`: the training ends well but Ray's shutdown hangs (`SISA_FAULT=ray-shutdown`
    in the driver); the CLI gives it `RAY_STOP_S`, then exits with the verb's code."""
    _ended(endings, request)


def _train_ending(root: Path, tmp: Path, how: str):
    args = cli_args(root, *SLICES, *RAY)
    code, _, err = run_cli("ingest", str(_more_people(tmp)), *args)
    assert code == 0, err

    def scenario(run) -> None:
        if how == "ray-stop-hangs":
            r = run("train", *args, hang=True, SISA_FAULT="ray-shutdown")
            r.wait_hanging()
            started = time.monotonic()
            assert r.end("exit") == 0, r.output[-3000:]
            assert time.monotonic() - started < RAY_STOP_S + 15, "the CLI should give Ray's shutdown RAY_STOP_S"
            assert "Ray did not stop within" in r.output, r.output[-3000:]
            assert all(part in r.tree.names() for part in RAY_PARTS), r.tree.names()
            r.assert_nothing_left()
            return
        fault = {"SISA_FAULT": "train-between-slices"} if how != "exit" else {}
        r = run("train", *args, hang=how not in ("exit", "exception"), **fault)
        if how in ("exit", "exception"):
            code = r.end(how)
            assert (code == 0) == (how == "exit"), r.output[-3000:]
            if how == "exception":
                assert "shard job(s) failed" in r.output, r.output[-3000:]
        else:
            r.wait_hanging()
            code = r.end(how)
            assert code != 0, r.output[-3000:]
        assert all(part in r.tree.names() for part in RAY_PARTS), r.tree.names()
        r.assert_nothing_left()

    return scenario


# The other long verbs that start the embedded Ray, each caught in its own shard jobs. One ending
# of each way out of the process: a normal exit (an exception leaves by the same interpreter exit,
# tested with `train` above), Ctrl-C (KeyboardInterrupt, with the whole group signalled) and
# SIGKILL (nothing of sisa runs: the watchdog; a SIGTERM, which the CLI does not catch, ends the
# process the same way).
LONG_VERBS = {
    "forget": ("forget-during-retrain", lambda subject: ("forget", "--subject", subject)),
    "process": ("forget-during-retrain", lambda subject: ("process",)),
    "verify-replay": ("train-between-slices", lambda subject: ("verify", "--replay")),
}


@pytest.mark.parametrize("how", ["exit", "ctrl-c", "sigkill"])
@pytest.mark.parametrize("verb", sorted(LONG_VERBS))
def test_long_verbs_leave_no_ray_process_however_they_end(verb, how, endings, request):
    _ended(endings, request)


def _long_verb_ending(root: Path, tmp: Path, verb: str, how: str):
    from sisa.storage.store import Store

    from tests.reliability.helpers import subject_in_middle

    args = cli_args(root, *SLICES, *RAY)
    subject, _, _ = subject_in_middle(Store.open(str(root)))
    if verb == "process":
        code, out, err = run_cli("forget", "--subject", subject, "--queue", *args)
        assert code == 0, out + err
    stage, argv = LONG_VERBS[verb]
    hang = how != "exit"

    def scenario(run) -> None:
        r = run(*argv(subject), *args, hang=hang, **({"SISA_FAULT": stage} if hang else {}))
        if hang:
            r.wait_hanging()
        code = r.end(how)
        assert (code == 0) == (how == "exit"), r.output[-3000:]
        assert all(part in r.tree.names() for part in RAY_PARTS), r.tree.names()
        r.assert_nothing_left()

    return scenario


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_sisa_serve_mid_batch_leaves_no_ray_process_however_it_ends(how, endings, request):
    """The worker's batch retrains on the embedded Ray (a shard job hangs there) when the server
    is stopped; Ctrl-C and SIGTERM stop it within its shutdown timeout."""
    _ended(endings, request)


def _serve_ending(root: Path, tmp: Path, how: str):
    from sisa.storage.store import Store

    from tests.reliability.helpers import subject_in_middle
    from tests.servers import free_port

    args = cli_args(root, *SLICES, *RAY)
    subject, _, _ = subject_in_middle(Store.open(str(root)))
    code, out, err = run_cli("forget", "--subject", subject, "--queue", *args)
    assert code == 0, out + err
    serve = (*args, "deletion.batch_after_h=0", "service.worker_interval_s=0.5", "service.shutdown_timeout_s=2")

    def scenario(run) -> None:
        port = f"service.port={free_port()}"  # chosen when it starts: a port picked earlier may be taken
        r = run("serve", *serve, port, hang=True, SISA_FAULT="forget-during-retrain")
        r.wait_hanging()
        started = time.monotonic()
        r.end(how)
        if how != "sigkill":
            assert time.monotonic() - started < 60, "sisa serve should stop within its shutdown timeout"
        assert all(part in r.tree.names() for part in RAY_PARTS), r.tree.names()
        r.assert_nothing_left()

    return scenario


# test name → what prepares its ending (in the main thread) and returns the scenario to play.
PREPARE = {
    "test_sisa_train_leaves_no_ray_process_however_it_ends": _train_ending,
    "test_long_verbs_leave_no_ray_process_however_they_end": _long_verb_ending,
    "test_sisa_serve_mid_batch_leaves_no_ray_process_however_it_ends": _serve_ending,
}


def _more_people(tmp_path: Path) -> Path:
    """New records for the template store, so `sisa train` has slices to train."""
    from sisa.data.synthetic import write_jsonl

    path = tmp_path / "input" / "more.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(people(8, start=500), path)
    return path
