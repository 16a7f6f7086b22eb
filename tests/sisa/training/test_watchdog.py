"""The embedded Ray's watchdog (sisa/training/watchdog.py) on a process tree of its own making, no
Ray: a "driver" starts the watchdog as the scheduler does, a child whose command line names a Ray
session of the driver's pid (as Ray names them) with a grandchild of its own (as the raylet forks
its agents), and an unrelated child. SIGKILL of the driver: the session's processes are killed,
the unrelated one is left alone, the watchdog ends. With Ray itself: tests/reliability/test_leftovers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import REPO

WATCHDOG = str(REPO / "sisa" / "training" / "watchdog.py")
SLEEP = "import time; time.sleep(600)"
DRIVER = f"""
import os, subprocess, sys, time
wd = subprocess.Popen([sys.executable, "-I", "-S", {WATCHDOG!r}, str(os.getpid())], stdin=subprocess.PIPE,
                      start_new_session=True)
session = f"/tmp/sisa-watchdog-test/session_2026-12-01_00-00-00_000000_{{os.getpid()}}"
ray_like = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                             "subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); time.sleep(600)", session])
other = subprocess.Popen([sys.executable, "-c", {SLEEP!r}, "not-ray"])
print(wd.pid, ray_like.pid, other.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc")
def test_a_killed_driver_takes_its_ray_session_with_it_and_nothing_else():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    other = None
    try:
        wd, ray_like, other = (int(x) for x in driver.stdout.readline().split())
        deadline = time.monotonic() + 30
        while not psutil.Process(ray_like).children():
            assert time.monotonic() < deadline, "the session's child should have started its own"
            time.sleep(0.1)
        (forked,) = psutil.Process(ray_like).children()
        time.sleep(1.0)  # a few of the watchdog's scans: it has noted both
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
        deadline = time.monotonic() + 20
        while not (_gone(ray_like) and _gone(forked.pid) and _gone(wd)):
            assert time.monotonic() < deadline, "the session's processes (and the watchdog) should end"
            time.sleep(0.1)
        assert not _gone(other), "a child that is not of the Ray session is not the watchdog's"
    finally:
        driver.kill()
        if other is not None and not _gone(other):
            os.kill(other, signal.SIGKILL)
