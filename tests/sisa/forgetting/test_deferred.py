"""Deferred work (sisa/forgetting/deferred.py): done in order, on a thread beside the body, once;
its error and the body's both reach the caller."""

from __future__ import annotations

import threading

import pytest

from sisa.forgetting.deferred import Deferred


def test_the_work_runs_beside_the_body_in_order_and_once() -> None:
    d, done, seen = Deferred(), threading.Event(), []
    d.later(lambda: seen.append(("first", threading.current_thread().name)))
    d.later(lambda: (seen.append(("second", threading.current_thread().name)), done.set()))
    with d.beside():
        # The body waits for the work: were it not beside the body, this would time out.
        assert done.wait(30), "the deferred work did not run while the body ran"
        body = threading.current_thread().name
    assert [w for w, _ in seen] == ["first", "second"]
    assert all(thread != body for _, thread in seen)
    assert len(d) == 0
    d.catch_up()  # nothing left: nothing runs twice
    assert len(seen) == 2


def test_caught_up_first_the_body_runs_alone() -> None:
    d, seen = Deferred(), []
    d.later(lambda: seen.append("work"))
    d.catch_up()
    with d.beside():
        seen.append(("body", threading.current_thread().name))
    assert seen == ["work", ("body", threading.main_thread().name)]


def test_the_works_error_is_raised_once_the_body_is_done() -> None:
    d, seen = Deferred(), []
    d.later(lambda: (_ for _ in ()).throw(RuntimeError("measure failed")))
    d.later(lambda: seen.append("after the failure"))
    with pytest.raises(RuntimeError, match="measure failed"), d.beside():
        seen.append("body")
    assert seen == ["body"]  # the work stopped at its error; the body ran to its end


def test_a_failing_body_stops_the_work_after_its_current_piece() -> None:
    d, started, seen = Deferred(), threading.Event(), []

    def slow() -> None:
        started.set()
        threading.Event().wait(1)  # still measuring when the body fails
        seen.append("slow")

    d.later(slow)
    d.later(lambda: seen.append("never"))
    with pytest.raises(KeyboardInterrupt), d.beside():
        assert started.wait(30)
        raise KeyboardInterrupt  # a Ctrl-C while the shard jobs train
    # The piece under way finished before the error went on (no half-written evidence); the
    # rest was dropped with the failed run.
    assert seen == ["slow"] and len(d) == 0


def test_work_queued_by_work_is_done_too() -> None:
    d, seen = Deferred(), []
    d.later(lambda: d.later(lambda: seen.append("queued by the first")))
    with d.beside():
        pass
    assert seen == ["queued by the first"]
