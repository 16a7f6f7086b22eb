"""The exception tree survives pickling (Ray ships errors between processes), fields included."""

from __future__ import annotations

import pickle

import pytest
from sisa.storage.errors import (
    ConfigError,
    IntegrityError,
    NotFoundError,
    RefusedError,
    ShardJobError,
    SisaError,
    StoreError,
    StoreLockedError,
    ValidationError,
)


def round_trip(error: BaseException) -> BaseException:
    return pickle.loads(pickle.dumps(error))


@pytest.mark.parametrize(
    "cls",
    [SisaError, StoreError, StoreLockedError, IntegrityError, ValidationError, NotFoundError, RefusedError],
)
def test_every_error_keeps_its_type_message_and_exit_code(cls):
    back = round_trip(cls("record_id r-7 is unknown; pass --allow-missing"))
    assert type(back) is cls
    assert back.message == str(back) == "record_id r-7 is unknown; pass --allow-missing"
    assert back.exit_code == cls.exit_code


def test_config_error_keeps_every_problem():
    back = round_trip(ConfigError(["`a.b` should be >= 1, got 0", "`c` is unknown"]))
    assert back.problems == ["`a.b` should be >= 1, got 0", "`c` is unknown"]
    assert "2 problem(s)" in back.message and back.exit_code == 2


def test_shard_job_error_keeps_the_per_shard_error_map():
    errors = {1: ValidationError("shard 1 has a malformed slice"), 3: RuntimeError("shard 3 ran out of luck")}
    err = ShardJobError("2 of 4 shard job(s) failed (shard_id 1, 3)", shard_ids=[1, 3], errors=errors)
    back = round_trip(err)
    assert type(back) is ShardJobError and back.message == err.message
    assert back.shard_ids == [1, 3]
    assert list(back.errors) == [1, 3]
    assert type(back.errors[1]) is ValidationError and back.errors[1].message == "shard 1 has a malformed slice"
    assert type(back.errors[3]) is RuntimeError and str(back.errors[3]) == "shard 3 ran out of luck"
    assert back.errors[1] is not errors[1]  # a real copy, not the same objects handed back


def test_shard_job_error_without_a_map():
    # How the trainer raises it inside a worker: a message and no per-shard map.
    back = round_trip(ShardJobError("training diverged (loss nan); lower training.lr", []))
    assert back.shard_ids == [] and back.errors == {}
    # The failed shards default to the map's keys.
    assert ShardJobError("x", errors={2: RuntimeError("y")}).shard_ids == [2]
