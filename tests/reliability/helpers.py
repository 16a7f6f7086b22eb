"""Helpers for the reliability tests (tests/reliability/): crashes, worker death, concurrency,
tampering, bad input, leaks and exposure.

Every test runs on configs/tiny.yaml with slices of 8 (`SLICES`, passed to the shared
`make_cfg`/`cli_args` of tests/helpers.py) against a real store. The real CLI runs in a
subprocess where a test needs the process to die (`sisa_proc`), and in-process elsewhere
(`run_cli`), which skips seconds of imports per call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints
from sisa.offline import OFFLINE_ENV
from tests.helpers import REPO, cli_args, one_slice_subjects, run_cli

# Slices of 8 give every shard two or three slices from 20 people, so a deletion in a middle
# slice retrains from a real parent checkpoint.
SLICES = ("sharding.slice_size=8",)
PEOPLE = 20
PEOPLE_SEED = 11


# -- the CLI in a child process --------------------------------------------------------------------
def sisa_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SISA_FAULT")}
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env


def sisa_proc(*argv: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """The real `sisa` command in a child process (`python -m pipelines.cli`)."""
    return subprocess.run(
        [sys.executable, "-m", "sisa.pipelines.cli", *argv],
        cwd=REPO,
        env=sisa_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sisa_popen(*argv: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sisa.pipelines.cli", *argv],
        cwd=REPO,
        env=sisa_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


# -- store state -------------------------------------------------------------------------------------
def status(root: Path | str) -> dict:
    code, out, err = run_cli("status", "--json", *cli_args(root, *SLICES))
    assert code == 0, err
    return json.loads(out)


def requests_of(root: Path | str) -> list[dict]:
    from sisa.storage import ledgers

    return ledgers.list_requests(Store.open(str(root)).fs)


def live_ids(root: Path | str) -> set[str]:
    return set(Store.open(str(root)).index.table["record_id"].to_pylist())


def subject_in_middle(store: Store) -> tuple[str, int, int]:
    """A subject whose records all sit in one slice after the first of a shard with a later
    slice: forgetting it retrains from a parent checkpoint and rewrites at least two slices.
    Returns (subject_id, shard_id, slice_idx)."""
    for subject, (shard, sl) in one_slice_subjects(store).items():
        if 0 < sl < max(checkpoints.shard_slices(store, shard)):
            return subject, shard, sl
    raise AssertionError("the template data should give some subject a middle slice")


# -- data ---------------------------------------------------------------------------------------------
def people(n: int = PEOPLE, seed: int = PEOPLE_SEED, start: int = 0) -> list[dict]:
    return make_people(n, seed=seed, start=start)
