"""Deterministic fault injection for crash tests.

`SISA_FAULT=<stage>` makes the process SIGKILL itself when it reaches that stage, exactly as a
power cut or OOM kill would: no cleanup, no finally blocks. The reliability tests use it to
prove that every stage leaves the serving version intact and the work resumable. Stages:

    ingest-after-parts      data parts written, index and ledger entry not yet
    train-between-slices    a shard job saved one slice's checkpoint, more slices to go
    forget-after-ledger     the request is in the ledger, nothing deleted yet
    forget-after-delete     records deleted, retrain not started
    forget-during-retrain   inside a retraining shard job
    forget-during-purge     some tainted checkpoints deleted, not all
    pointer-move            a version entry written, the current pointer not yet moved
    ray-shutdown            stopping the embedded Ray (sisa/training/scheduler.py: shutdown_ray)
    forget-after-<phase>    a request carried out at once, written to the ledger after that phase of
    batch-after-<phase>     the request runner (sisa/forgetting/runner.py: ledger, delete, commit, ...)

`SISA_FAULT_AFTER=n` lets the stage pass n times before dying (e.g. the second slice): each
pass counts it down in this process's environment (only when `SISA_FAULT` names the stage; no
module state), so the count lives where the setting does.

`SISA_FAULT_HANG=<file>` makes the stage hang instead of dying, after writing its pid to that
file: a test then kills what it chooses around the process (a whole Ray node) mid-job, or acts
at that moment (files a request) and deletes the file, and the process goes on (no fault again).

    slice-read              a shard job read a slice's records (texts and lineage), not yet trained
"""

from __future__ import annotations

import os
import signal
import time


def maybe_die(stage: str) -> None:
    if os.environ.get("SISA_FAULT") != stage:
        return
    passes_left = int(os.environ.get("SISA_FAULT_AFTER", "0"))
    if passes_left > 0:
        os.environ["SISA_FAULT_AFTER"] = str(passes_left - 1)
        return
    hang = os.environ.get("SISA_FAULT_HANG")
    if hang:
        with open(hang, "w") as f:
            f.write(str(os.getpid()))
        while os.path.exists(hang):
            time.sleep(0.2)
        os.environ.pop("SISA_FAULT", None)  # once released, the process runs on without faults
        return
    os.kill(os.getpid(), signal.SIGKILL)
