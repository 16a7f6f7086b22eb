"""The year-of-requests simulation (benchmarks/deletion_requests.py) on tiny numbers: its
invariants, never its timings."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.deletion_requests import (
    POLICIES,
    CostModel,
    Policy,
    Requests,
    SimResult,
    Workload,
    batched,
    full_passes,
    initial_counts,
    make_requests,
    one_at_a_time,
    retrain_passes,
    served_share,
)
from sisa.config import SisaConfig

COST = CostModel(
    pass_s=1e-3, slice_s=0.05, job_s=0.5, request_s=2.0, batch_s=2.0, batch_request_s=0.2, relief_s=0.3, workers=2
)
DEFAULT = Policy(
    SisaConfig().deletion.batch_after_h, SisaConfig().deletion.batch_max, SisaConfig().deletion.deadline_margin_days
)


@pytest.fixture(scope="module")
def year() -> tuple[Workload, object, object, list]:
    w = Workload(records=20_000, shards=4, slices=8, rate=100, days=120, seed=3)
    reqs = make_requests(w)
    return w, reqs, one_at_a_time(w, COST, reqs), [batched(w, COST, reqs, p) for p in [DEFAULT, *POLICIES]]


def test_counts_hold_every_record_and_a_full_retrain_costs_what_the_planner_counts() -> None:
    w = Workload(records=1003, shards=3, slices=4)
    counts = initial_counts(w)
    assert counts.sum() == 1003 and counts.max() - counts.min() <= 1
    assert full_passes(w) == sum(retrain_passes(w, counts[s], 0) for s in range(3))
    assert retrain_passes(w, counts[0], 3) < retrain_passes(w, counts[0], 0)


def test_requests_arrive_in_order_within_the_store(year) -> None:
    w, reqs, _, _ = year
    assert len(reqs) > 0
    assert (np.diff(reqs.arrival_h) >= 0).all() and reqs.arrival_h.max() <= w.days * 24
    assert reqs.shard.max() < w.shards and reqs.slice.max() < w.slices


def test_every_request_completes_after_its_relief(year) -> None:
    _, reqs, one, runs = year
    for r in [one, *runs]:
        assert r.completed == len(reqs), r.name
        assert (r.relief_h >= 0).all() and (r.exact_h >= r.relief_h).all(), r.name


def test_batching_never_does_more_work_than_one_at_a_time(year) -> None:
    _, reqs, one, runs = year
    for r in runs:
        assert r.passes <= one.passes, r.name
        assert r.retrains.sum() <= one.retrains.sum() and r.batches <= len(reqs), r.name
    assert one.retrains.sum() == len(reqs)  # one retrain per request


def test_waiting_longer_batches_more(year) -> None:
    _, _, _, runs = year
    by_policy = {r.name: r for r in runs}
    at_once, deadline_only = by_policy[POLICIES[0].label], by_policy[POLICIES[-1].label]
    assert deadline_only.batches < at_once.batches and deadline_only.passes < at_once.passes


def test_the_default_policy_misses_no_deadline(year) -> None:
    _, _, _, runs = year
    assert runs[0].name == DEFAULT.label and runs[0].missed == 0


def test_served_share_is_the_time_mean_of_what_relieved_shards_still_serve() -> None:
    w = Workload(records=1000, shards=2, slices=4, days=10)
    # Shard 0: a request at slice 1 relieved for 24 h, one at slice 2 overlapping it for 48 h
    # (the shard serves 1/4 of its slices while both wait); shard 1 untouched.
    reqs = Requests(
        arrival_h=np.array([0.0, 12.0]), shard=np.array([0, 0]), slice=np.array([1, 2]), records=np.array([2, 2])
    )
    res = SimResult("hand", relief_h=np.array([0.0, 0.0]), exact_h=np.array([24.0, 48.0]))
    lost = 24 * (1 - 1 / 4) + 36 * (1 - 2 / 4)  # hours 0-24 at 1/4, hours 24-60 at 2/4
    assert served_share(w, reqs, res) == pytest.approx(1 - lost / (240 * 2))
    # Never relieved, never done: nothing is lost; a longer wait loses more.
    assert served_share(w, reqs, SimResult("none", relief_h=np.full(2, np.nan), exact_h=np.full(2, np.nan))) == 1.0
    longer = SimResult("longer", relief_h=np.array([0.0, 0.0]), exact_h=np.array([48.0, 72.0]))
    assert served_share(w, reqs, longer) < served_share(w, reqs, res)


def test_a_longer_wait_cuts_work_but_serves_less(year) -> None:
    w, reqs, one, runs = year
    by = {r.name: r for r in runs}
    quick, slow = by[Policy(0, 20, 7).label], by[Policy(720, 1000, 7).label]
    assert slow.passes < quick.passes
    assert served_share(w, reqs, slow) < served_share(w, reqs, quick) <= 1.0
