"""The typed request and version entries: statuses, JSON round trips, tolerance of unknown keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sisa.lineage.requests_ledger import (
    SCHEMA_VERSION,
    DeletionPlan,
    DeletionRequest,
    RequestMode,
    RequestStatus,
    ShardPlan,
)
from sisa.lineage.versions import ModelVersion, VersionStatus


def _request(**kw) -> DeletionRequest:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    base = dict(
        request_id="req-1",
        selector={"kind": "subject", "value_hash": "ab", "value_hashes": ["ab"]},
        id_hashes=["h1", "h2"],
        records=2,
        received_at=now.isoformat(),
        deadline=(now + timedelta(days=30)).isoformat(),
    )
    return DeletionRequest(**(base | kw))


def test_open_and_terminal_are_one_definition():
    assert {s for s in RequestStatus if s.is_open} == {
        RequestStatus.RECEIVED,
        RequestStatus.AWAITING_APPROVAL,
        RequestStatus.QUEUED,
        RequestStatus.DATA_DELETED,
        RequestStatus.RETRAINING,
    }
    assert {s for s in RequestStatus if s.is_terminal} == {
        RequestStatus.COMPLETED,
        RequestStatus.FAILED,
        RequestStatus.REJECTED,
    }
    assert all(s.is_open != s.is_terminal for s in RequestStatus)
    with pytest.raises(ValueError, match="unknown deletion request status 'paused'"):
        RequestStatus.parse("paused")


def test_a_request_round_trips_through_json_with_its_plan_typed():
    plan = DeletionPlan("subject", 2, [ShardPlan(1, 0, 3, 2, [0, 2])], [0, 2, 3], retrain_cost=12.0, full_cost=48.0)
    req = _request(plan=plan, mode=RequestMode.FAST, versions={"approximate": 2})
    req.move_to(RequestStatus.DATA_DELETED)
    d = req.to_dict()
    assert d["status"] == "data_deleted" and d["mode"] == "fast" and d["schema_version"] == SCHEMA_VERSION
    assert d["plan"]["cost_fraction"] == 0.25 and d["history"][-1]["status"] == "data_deleted"
    back = DeletionRequest.from_dict(d)
    assert back.status is RequestStatus.DATA_DELETED and back.mode is RequestMode.FAST
    assert (
        isinstance(back.plan, DeletionPlan)
        and back.plan.shards[0].slices_hit == [0, 2]
        and back.plan.cost_fraction == 0.25
    )
    assert back.to_dict() == d


def test_unknown_keys_survive_a_read_and_write_by_an_older_sisa():
    d = _request().to_dict() | {"written_by_a_newer_sisa": {"x": 1}, "schema_version": SCHEMA_VERSION + 1}
    back = DeletionRequest.from_dict(d)
    assert back.extra == {"written_by_a_newer_sisa": {"x": 1}} and back.schema_version == SCHEMA_VERSION + 1
    assert back.to_dict() == d


def test_overdue_means_past_the_deadline_and_not_completed():
    late = datetime(2026, 12, 15, tzinfo=UTC)
    assert _request().is_overdue(late) and not _request().is_overdue(datetime(2026, 11, 2, tzinfo=UTC))
    assert _request(status=RequestStatus.FAILED).is_overdue(late)
    assert not _request(status=RequestStatus.COMPLETED).is_overdue(late)
    assert "id_hashes" not in _request().public_dict() and _request().public_dict()["id_hash_count"] == 2


def test_model_version_round_trips_and_reads_version_one_entries():
    v = ModelVersion(
        3,
        {1: "s00001-l000002-aa", 0: "s00000-l000001-bb"},
        "forget",
        "2026-11-01T00:00:00+00:00",
        "fp",
        "tiny",
        aggregation="posterior",
    )
    d = v.to_dict()
    assert list(d["shards"]) == ["0", "1"] and d["status"] == "active"
    assert ModelVersion.from_dict(d) == v
    old = d | {"aggregation": "ensemble", "status": "purged", "purged_by": "req-1", "someday": True}
    back = ModelVersion.from_dict(old)
    assert back.aggregation == "uniform" and back.status is VersionStatus.PURGED and back.extra == {"someday": True}
    assert back.shards == {0: "s00000-l000001-bb", 1: "s00001-l000002-aa"}
