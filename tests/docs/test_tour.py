"""The docs' quick tour runs top to bottom as written, and its committed transcript is what it
prints today (docs/tour/record.py records it; only times, dates, random ids and hashes may
differ, and a number with decimals by 0.1%)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _recorder():
    spec = importlib.util.spec_from_file_location("tour_record", ROOT / "docs" / "tour" / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_normalise_blanks_only_what_varies() -> None:
    tour = _recorder()
    a = "exact version 3 serves (retrained shard(s) [1] in 43.7s)\nrequest req-20261207-033603-d5d842 completed"
    b = "exact version 3 serves (retrained shard(s) [1] in 9.1s)\nrequest req-20261208-101010-0a0b0c completed"
    assert tour.normalise(a) == tour.normalise(b)
    # What the tour is about stays compared: versions, shards, counts, costs, statuses.
    for changed in ("exact version 4 serves", "shard(s) [0]", "61.5% of a full retrain", "status     queued"):
        assert tour.normalise(a) != tour.normalise(a.replace(a.split("\n")[0], changed))
    row = "0         0,1     8      5.466  373       3.56    s00000-l000001-0234ca16779dddc5"
    assert tour.normalise(row) == "0 0,1 8 5.466 <N> <N> s00000-l000001-<HASH>"
    assert tour.normalise(row) != tour.normalise(row.replace("5.466", "5.467"))


def test_differences_let_only_the_last_digit_of_a_decimal_vary() -> None:
    tour = _recorder()
    committed = "approximate fast path    5.386\nretrain cost      61.4% of a full retrain\n2 record(s)"
    # Another CPU rounds float32 otherwise: a loss's last digit may move.
    assert tour.differences(committed.replace("5.386", "5.387"), committed) == []
    # More than that, any integer, any word, or a line more or less is a difference.
    for changed in ("5.396", "61.5%", "3 record(s)", "approximate slow path"):
        old = {"5.396": "5.386", "61.5%": "61.4%", "3 record(s)": "2 record(s)"}.get(changed, "approximate fast path")
        assert tour.differences(committed.replace(old, changed), committed), changed
    assert tour.differences(committed + "\nextra", committed) == ["4 lines today, 3 committed"]


@pytest.mark.slow
def test_the_tour_runs_as_written_and_prints_the_committed_transcript(tmp_path: Path) -> None:
    tour = _recorder()
    fresh = tour.record()  # raises, naming the command, if one fails that the tour does not mark refused
    committed = tour.TRANSCRIPT.read_text()
    (tmp_path / "transcript.txt").write_text(fresh)
    assert [line for line in fresh.splitlines() if line.startswith("$ ")] == [f"$ {line}" for line in tour.tour_lines()]
    changed = tour.differences(fresh, committed)
    assert not changed, (
        f"the tour prints something else today: `.venv/bin/python docs/tour/record.py` rewrites "
        f"{tour.TRANSCRIPT.relative_to(ROOT)} (this run's: {tmp_path / 'transcript.txt'}):\n" + "\n".join(changed)
    )
