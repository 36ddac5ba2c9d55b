"""Unit tests: the wall-clock grid schedule's maths."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

from pubtasks.schedule import MAX_CATCH_UP, Plan, every, next_at, plan


@pytest.mark.parametrize(
    ("last", "now", "interval", "expected"),
    [
        # Not yet: the next grid point after the last tick is in the future.
        (10.0, 10.3, 1.0, Plan(False, None, 0.7)),
        # Due right on the grid point; then wait a whole interval.
        (10.0, 11.0, 1.0, Plan(True, 11.0, 1.0)),
        # Beat woke late: the tick keeps its grid time, the wait shrinks (no drift).
        (10.0, 11.25, 1.0, Plan(True, 11.0, 0.75)),
        # Beat woke 100 us early (timer granularity): still this grid point.
        (10.0, 10.9999, 1.0, Plan(True, 11.0, 1.0001)),
        # Behind by three ticks after a stall: fire the next one now, then the others at once.
        (10.0, 13.5, 1.0, Plan(True, 11.0, 0.0)),
        # Start (last = start time, off the grid): the first tick is the next grid point.
        (10.3, 10.45, 0.5, Plan(False, None, 0.05)),
        (10.3, 10.6, 0.5, Plan(True, 10.5, 0.4)),
        # Sub-second intervals stay exact in integer microseconds.
        (0.1 * 123456789, 0.1 * 123456790, 0.1, Plan(True, 12345679.0, 0.1)),
    ],
)
def test_plan(last: float, now: float, interval: float, expected: Plan) -> None:
    got = plan(last, now, interval)
    assert got.due == expected.due
    assert got.tick_at == (None if expected.tick_at is None else pytest.approx(expected.tick_at))
    assert got.wait == pytest.approx(expected.wait, abs=1e-6)


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (10.0, 10.3, 11.0),  # the next grid point, however long ago the wait was measured
        (10.0, 10.9999, 10.9999),  # due now (within the early-wake allowance)
        (10.0, 11.2, 11.2),  # overdue: now
    ],
)
def test_next_at(last: float, now: float, expected: float) -> None:
    assert next_at(last, now, 1.0) == pytest.approx(expected)


def test_a_long_stall_skips_ahead_instead_of_bursting() -> None:
    got = plan(0.0, (MAX_CATCH_UP + 10) * 1.0, 1.0)
    assert not got.due
    assert got.wait == pytest.approx(1.0)


def test_ticks_follow_the_grid_without_drift_however_late_beat_wakes() -> None:
    # Given beat waking 3 ms late for every tick, for 10 000 ticks at 0.05 s
    interval, last, fired = 0.05, 1_795_000_000.0, []
    now = last
    for _ in range(10_000):
        now += plan(last, now, interval).wait + 0.003
        p = plan(last, now, interval)
        assert p.due
        fired.append(p.tick_at)
        last = p.tick_at
    # Then tick k is exactly t0 + k * interval
    t0 = fired[0]
    assert all(abs(t - (t0 + k * interval)) < 1e-6 for k, t in enumerate(fired))


def test_plan_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan(0.0, 1.0, 0.0)


def test_every_survives_pickling_for_the_beat_schedule_file() -> None:
    assert pickle.loads(pickle.dumps(every(2.5))) == every(2.5)
    assert pickle.loads(pickle.dumps(every())) == every()
    assert every(1.0) != every(2.0)


def test_every_is_due_on_the_grid() -> None:
    last = datetime.fromtimestamp(100.0, UTC)
    assert every(1.0).plan(last, now=100.5) == Plan(False, None, 0.5)
    assert every(1.0).plan(last, now=101.0).tick_at == pytest.approx(101.0)
