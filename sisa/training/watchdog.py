"""The embedded Ray's watchdog: no process of a Ray that sisa started outlives sisa.

Measured with Ray 2.60 on this machine: when the driver ends without `ray.shutdown()` (SIGKILL,
or an exit that cuts the shutdown short, as `sisa serve` stopped mid-batch did), the GCS and the
raylet die with it, but the raylet's two agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`)
notice their parent is gone, try to report it to the dead GCS and hang there for good, ignoring
SIGTERM. Ray's own switch (`RAY_enable_pipe_based_agent_to_parent_health_check`) ends in the same
report; PR_SET_PDEATHSIG cannot reach them (the raylet forks them, and fork clears it); a
process group is shared with whoever started sisa (a shell, pytest), so it cannot be killed whole.

So the scheduler (sisa/training/scheduler.py) starts this script beside the embedded Ray: its own
process, in its own session (a Ctrl-C to the terminal's process group does not reach it), reading
a pipe whose write end only the driver holds. The driver writes its Ray session folder on the pipe
once Ray is up. Until the pipe closes, the watchdog notes every `POLL_S` the processes of that
session: those whose command line names the session folder (before it is known: the driver's
children whose command line names a session of the driver's pid, as Ray names them) and all their
descendants. The pipe closes when the driver stops Ray or ends in any way, SIGKILL included; the
watchdog then gives the noted processes `GRACE_S` to end by themselves, SIGKILLs those still
alive (same pid and same start time: never a recycled pid) and exits.

Linux only (/proc); elsewhere it exits at once and Ray's own shutdown is all there is. Standard
library only, run as `python -I -S watchdog.py DRIVER_PID`: it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import time

POLL_S = 0.25
GRACE_S = 2.0
PROC = "/proc"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None (gone, or a zombie)."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, start time) of every live process."""
    out = {}
    for name in os.listdir(PROC):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


class Watch:
    """The processes of one driver's Ray session, noted as (pid, start time)."""

    def __init__(self, driver: int):
        self.driver = driver
        self.session: str | None = None
        # Ray names a session after the pid of the driver that started it.
        self.own_session = re.compile(rf"/session_[0-9_-]+_{driver}(/|\s|$)")
        self.noted: dict[int, int] = {}

    def _matches(self, pid: int, parent: int) -> bool:
        cmd = _cmdline(pid)
        if self.session is not None:
            return self.session in cmd
        return parent == self.driver and bool(self.own_session.search(cmd))

    def scan(self, find_new: bool = True) -> None:
        table = _table()
        self.noted = {p: t for p, t in self.noted.items() if table.get(p, (0, -1))[1] == t}
        if find_new:
            for pid, (parent, start) in table.items():
                if pid not in self.noted and pid != os.getpid() and self._matches(pid, parent):
                    self.noted[pid] = start
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
        todo = list(self.noted)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in self.noted and child != os.getpid():
                    self.noted[child] = table[child][1]
                    todo.append(child)

    def alive(self) -> list[int]:
        return [p for p, t in self.noted.items() if (_stat(p) or (0, -1))[1] == t]

    def reap(self) -> None:
        """What is left once the driver is gone: a grace period, then SIGKILL."""
        self.scan(find_new=self.session is not None)
        deadline = time.monotonic() + GRACE_S
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(5):  # a process may start a child while it is being killed
            self.scan(find_new=self.session is not None)
            left = self.alive()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str]) -> int:
    if not os.path.isdir(f"{PROC}/self"):
        return 0
    # A Ctrl-C or a hangup meant for the driver's terminal is not for the watchdog; a SIGTERM
    # (a service manager stopping everything) reaps at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    watch = Watch(int(argv[1]))
    fd, buffered = sys.stdin.fileno(), b""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], POLL_S)
            if ready:
                data = os.read(fd, 4096)
                if not data:  # the driver stopped Ray, or is gone
                    break
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.startswith(b"session "):
                        watch.session = line[8:].decode()
            watch.scan()
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch.reap()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
