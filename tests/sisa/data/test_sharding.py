"""Shard, slice and seed assignment: pure, deterministic, balanced, subject-grouped, append-only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from sisa.data.sharding import assign_shards, assign_slices, derive_seed

ids_st = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True)
subjects_st = st.sampled_from([None, "", "alice", "bob", "carol", "dan", "erin", "frank"])


def records_st():
    return ids_st.flatmap(
        lambda ids: st.tuples(st.just(ids), st.lists(subjects_st, min_size=len(ids), max_size=len(ids)))
    )


# -- shards -------------------------------------------------------------------------------------
def test_shard_assignment_is_pinned():
    # These values are in every existing store's files; a change here reshuffles users' shards.
    ids = ["r1", "r2", "r3", "r4", "r5", "r6"]
    subjects = [None, None, "alice", "alice", None, "bob"]
    assert assign_shards(0, ids, subjects, 8).tolist() == [6, 6, 7, 7, 5, 2]
    assert assign_shards(7, ids, subjects, 8).tolist() == [1, 7, 6, 6, 6, 4]


SHARDS_IN_CHILD = """
import json, sys
from sisa.data.sharding import assign_shards
ids = [f"rec-{i}" for i in range(5000)]
subjects = [f"person-{i % 700}" if i % 3 else None for i in range(5000)]
print(json.dumps({s: assign_shards(s, ids, subjects, n).tolist() for s, n in ((0, 8), (42, 5), (9, 1))}))
"""


def test_shard_assignment_is_stable_across_processes():
    ids = [f"rec-{i}" for i in range(5000)]
    subjects = [f"person-{i % 700}" if i % 3 else None for i in range(5000)]
    here = {str(s): assign_shards(s, ids, subjects, n).tolist() for s, n in ((0, 8), (42, 5), (9, 1))}
    for hashseed in ("1", "2"):  # str hashing differs between these processes; shards must not
        out = subprocess.run(
            [sys.executable, "-c", SHARDS_IN_CHILD],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hashseed, "PATH": ""},
        )
        assert json.loads(out.stdout) == here


def test_shards_are_balanced_on_100k_ids():
    ids = [f"user-{i:07d}" for i in range(100_000)]
    for num_shards in (2, 4, 8, 16):
        counts = np.bincount(assign_shards(0, ids, [None] * len(ids), num_shards), minlength=num_shards)
        expected = len(ids) / num_shards
        assert counts.sum() == len(ids)
        assert np.abs(counts - expected).max() / expected < 0.05, (num_shards, counts.tolist())


@settings(max_examples=200, deadline=None)
@given(records=records_st(), seed=st.integers(0, 2**32), num_shards=st.integers(1, 64))
def test_shards_are_int32_and_in_range(records, seed, num_shards):
    ids, subjects = records
    a = assign_shards(seed, ids, subjects, num_shards)
    assert a.dtype == np.int32 and len(a) == len(ids)
    assert ((a >= 0) & (a < num_shards)).all()


@settings(max_examples=200, deadline=None)
@given(records=records_st(), seed=st.integers(0, 1000), num_shards=st.integers(2, 32))
def test_all_records_of_one_subject_share_a_shard(records, seed, num_shards):
    ids, subjects = records
    shards = assign_shards(seed, ids, subjects, num_shards)
    by_subject = defaultdict(set)
    for subject, shard in zip(subjects, shards.tolist(), strict=True):
        if subject:
            by_subject[subject].add(shard)
    assert all(len(s) == 1 for s in by_subject.values())
    # A record without a subject is placed by its own id, as if the id were its subject.
    for rid, subject, shard in zip(ids, subjects, shards.tolist(), strict=True):
        key = subject or rid
        assert shard == assign_shards(seed, ["other"], [key], num_shards)[0]


@settings(max_examples=100, deadline=None)
@given(records=records_st(), seed=st.integers(0, 1000), num_shards=st.integers(2, 32), data=st.data())
def test_a_records_shard_does_not_depend_on_the_rest_of_the_batch(records, seed, num_shards, data):
    ids, subjects = records
    full = assign_shards(seed, ids, subjects, num_shards)
    perm = data.draw(st.permutations(range(len(ids))))
    keep = perm[: data.draw(st.integers(1, len(ids)))]
    part = assign_shards(seed, [ids[i] for i in keep], [subjects[i] for i in keep], num_shards)
    assert part.tolist() == [int(full[i]) for i in keep]


@settings(max_examples=100, deadline=None)
@given(records=records_st(), seed=st.integers(0, 1000), num_shards=st.integers(1, 32), cut=st.integers(0, 60))
def test_arrow_input_gives_the_same_shards_as_lists(records, seed, num_shards, cut):
    ids, subjects = records
    expected = assign_shards(seed, ids, subjects, num_shards).tolist()
    cut = min(cut, len(ids))
    chunked_ids = pa.chunked_array([ids[:cut], ids[cut:]], pa.string())
    chunked_subjects = pa.chunked_array([subjects[:cut], subjects[cut:]], pa.string())
    assert assign_shards(seed, chunked_ids, chunked_subjects, num_shards).tolist() == expected
    assert assign_shards(seed, pa.array(ids), pa.array(subjects, pa.string()), num_shards).tolist() == expected
    assert assign_shards(seed, tuple(ids), np.array(subjects, dtype=object), num_shards).tolist() == expected


def test_store_seed_changes_the_assignment():
    ids = [f"r{i}" for i in range(1000)]
    a = assign_shards(0, ids, [None] * 1000, 8)
    b = assign_shards(1, ids, [None] * 1000, 8)
    assert (a != b).mean() > 0.5


def test_empty_batch():
    assert assign_shards(0, [], [], 4).tolist() == []
    assert assign_slices(np.array([], dtype=np.int32), {}, 4).tolist() == []


# -- slices -------------------------------------------------------------------------------------
shard_seq_st = st.lists(st.integers(0, 5), min_size=0, max_size=200)
open_st = st.dictionaries(st.integers(0, 5), st.tuples(st.integers(0, 9), st.integers(0, 20)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(shards=shard_seq_st, slice_size=st.integers(1, 20), open_slices=open_st)
def test_slices_fill_in_arrival_order_up_to_slice_size(shards, slice_size, open_slices):
    """Each shard's records fill its open slice, then the next ones, in arrival order: every slice
    but a shard's last is full (counting records already in the open slice), none overflows."""
    open_slices = {s: (sl, min(n, slice_size - 1)) for s, (sl, n) in open_slices.items()}  # an open slice has room
    out = assign_slices(np.array(shards, dtype=np.int32), open_slices, slice_size)
    assert len(out) == len(shards)
    by_shard: dict[int, list[int]] = defaultdict(list)
    for shard, sl in zip(shards, out.tolist(), strict=True):
        by_shard[shard].append(sl)
    for shard, slices in by_shard.items():
        first, filled = open_slices.get(shard, (0, 0))
        # Arrival order: the first record goes to the open slice, later ones never go back, and
        # no slice index is skipped.
        assert slices[0] == first
        assert all(b - a in (0, 1) for a, b in zip(slices, slices[1:], strict=False))
        held = Counter(slices)
        held[first] += filled
        last = slices[-1]
        for sl in range(first, last + 1):
            assert held[sl] <= slice_size, (shard, sl, held[sl])
            if sl < last:
                assert held[sl] == slice_size, (shard, sl, held[sl])


def _open_after(shards: np.ndarray, slices: np.ndarray, slice_size: int, before: dict) -> dict:
    """The open-slice state after an ingest, as the store derives it from its counts."""
    state = dict(before)
    for shard in set(shards.tolist()):
        last = int(slices[shards == shard].max())
        first, filled = before.get(shard, (0, 0))
        n = int(((shards == shard) & (slices == last)).sum()) + (filled if last == first else 0)
        state[shard] = (last, n) if n < slice_size else (last + 1, 0)
    return state


@settings(max_examples=200, deadline=None)
@given(shards=st.lists(st.integers(0, 4), min_size=1, max_size=150), slice_size=st.integers(1, 16), data=st.data())
def test_two_ingests_give_the_same_slices_as_one(shards, slice_size, data):
    """Slices are append-only: ingesting A then B puts every record where ingesting A+B would."""
    shards = np.array(shards, dtype=np.int32)
    cut = data.draw(st.integers(0, len(shards)))
    together = assign_slices(shards, {}, slice_size)
    first = assign_slices(shards[:cut], {}, slice_size)
    second = assign_slices(shards[cut:], _open_after(shards[:cut], first, slice_size, {}), slice_size)
    assert np.concatenate([first, second]).tolist() == together.tolist()


def test_slices_example():
    shards = np.array([0, 1, 0, 0, 1, 0, 0], dtype=np.int32)
    assert assign_slices(shards, {}, 2).tolist() == [0, 0, 0, 1, 0, 1, 2]
    # Shard 0 has slice 3 open with one record in it; shard 1 starts a fresh slice 5.
    assert assign_slices(shards, {0: (3, 1), 1: (5, 0)}, 2).tolist() == [3, 5, 4, 4, 5, 5, 5]


# -- seeds --------------------------------------------------------------------------------------
def test_seed_values_are_pinned():
    assert derive_seed(0, 0, 0) == 5637371171102667656
    assert derive_seed(0, 3, 2) == 4647725632076558467
    assert derive_seed(1, 0, 0, "shuffle") == 159613882819264830


def test_seeds_differ_per_shard_slice_and_purpose():
    seeds = {derive_seed(0, shard, sl) for shard in range(64) for sl in range(64)}
    assert len(seeds) == 64 * 64
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert derive_seed(0, 1, 2, "train") != derive_seed(0, 1, 2, "shuffle")
    assert derive_seed(0, 1, 2) != derive_seed(1, 1, 2)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    shard=st.integers(0, 4095),
    sl=st.integers(0, 10**6),
    purpose=st.sampled_from(["train", "shuffle", "dropout"]),
)
def test_seeds_fit_63_bits_and_change_with_every_input(seed, shard, sl, purpose):
    s = derive_seed(seed, shard, sl, purpose)
    assert 0 <= s < 2**63
    assert s != derive_seed(seed, shard, sl + 1, purpose)
    assert s != derive_seed(seed, shard + 1, sl, purpose)
    assert s != derive_seed(seed + 1, shard, sl, purpose)
    assert s != derive_seed(seed, shard, sl, purpose + "-other")


SEEDS_IN_CHILD = """
import json
from sisa.data.sharding import derive_seed
print(json.dumps([derive_seed(s, sh, sl) for s in (0, 5) for sh in range(8) for sl in range(8)]))
"""


def test_seeds_are_stable_across_processes():
    here = [derive_seed(s, sh, sl) for s in (0, 5) for sh in range(8) for sl in range(8)]
    out = subprocess.run(
        [sys.executable, "-c", SEEDS_IN_CHILD],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "7", "PATH": ""},
    )
    assert json.loads(out.stdout) == here
