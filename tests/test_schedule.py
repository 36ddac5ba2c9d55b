"""Unit tests: the wall-clock grid schedule's maths."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

from pubtasks.defaults import CATCH_UP_WITHIN
from pubtasks.schedule import Plan, every, plan


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


@pytest.mark.parametrize("interval", [0.001, 0.05, 1.0, 30.0])
def test_ticks_missed_within_the_catch_up_window_all_fire_whatever_the_interval(
    interval: float,
) -> None:
    # Given the last tick fired just under CATCH_UP_WITHIN ago (beat stalled, or a new
    # holder of the beat lock going on from it)
    last = 1_795_000_000.0
    now = last + CATCH_UP_WITHIN - interval / 2
    # Then the tick after it is due now, with its own grid time: no tick is skipped
    got = plan(last, now, interval)
    assert got.due
    assert got.tick_at == pytest.approx(last + interval)


@pytest.mark.parametrize("interval", [0.05, 1.0])
def test_a_longer_silence_skips_ahead_instead_of_bursting(interval: float) -> None:
    last = 1_795_000_000.0
    got = plan(last, last + CATCH_UP_WITHIN + 10.3 * interval, interval)
    assert not got.due
    assert got.wait == pytest.approx(0.7 * interval)


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


def test_every_without_seconds_takes_publish_interval_from_beat() -> None:
    assert every().with_default(0.5) == every(0.5)
    assert every(2.0).with_default(0.5) == every(2.0)
    with pytest.raises(RuntimeError, match="PUBLISH_INTERVAL"):
        _ = every().seconds


def test_every_survives_pickling_for_the_beat_schedule_file() -> None:
    assert pickle.loads(pickle.dumps(every(2.5))) == every(2.5)
    assert pickle.loads(pickle.dumps(every())) == every()
    assert every(1.0) != every(2.0)


def test_every_is_due_on_the_grid() -> None:
    last = datetime.fromtimestamp(100.0, UTC)
    assert every(1.0).plan(last, now=100.5) == Plan(False, None, 0.5)
    assert every(1.0).plan(last, now=101.0).tick_at == pytest.approx(101.0)
