"""Unit tests: the wall-clock grid schedule's maths."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

from pubtasks.defaults import CATCH_UP_WITHIN
from pubtasks.schedule import Plan, Resumed, every, plan, resume


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
def test_after_a_longer_silence_only_the_ticks_within_the_window_fire(interval: float) -> None:
    # Given the last tick 10.3 intervals more than the window ago
    last = 1_795_000_000.0
    now = last + CATCH_UP_WITHIN + 10.3 * interval
    got = plan(last, now, interval)
    # Then the oldest tick fired is the first one within the window, and the rest follow
    assert got.due
    assert got.tick_at == pytest.approx(last + 11 * interval)
    assert now - got.tick_at <= CATCH_UP_WITHIN
    assert got.wait == 0


def fire_late(interval: float, last: float, ticks: int, late: float = 0.003) -> list[float]:
    """The ticks beat fires when it wakes ``late`` seconds after every wait it asked for."""
    fired: list[float] = []
    now = last
    for _ in range(ticks):
        now += plan(last, now, interval).wait + late
        p = plan(last, now, interval)
        assert p.due
        assert p.tick_at is not None
        fired.append(p.tick_at)
        last = p.tick_at
    return fired


@pytest.mark.parametrize("interval", [61.0, 3600.0, 86400.0])
def test_an_interval_longer_than_the_window_fires_every_tick(interval: float) -> None:
    # Given an interval longer than CATCH_UP_WITHIN (this used to fire once, then never:
    # the window was measured from the last tick, not from the tick that fell due)
    fired = fire_late(interval, 1_795_000_000.0 // interval * interval, 5)
    assert fired == [pytest.approx(fired[0] + k * interval) for k in range(5)]


def test_a_tick_later_than_the_window_is_skipped_for_the_next() -> None:
    # Given a 1-hour grid, and beat waking 2 minutes after a tick (window 60 s)
    got = plan(0.0, 3720.0, 3600.0, catch_up_within=60.0)
    # Then that tick is not fired late: beat waits for the next one
    assert not got.due
    assert got.wait == pytest.approx(3480.0)


def test_ticks_follow_the_grid_without_drift_however_late_beat_wakes() -> None:
    # Given beat waking 3 ms late for every tick, for 10 000 ticks at 0.05 s
    interval = 0.05
    fired = fire_late(interval, 1_795_000_000.0, 10_000)
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


# -- the missed-tick policy (catch_up) when a beat takes the lock ------------------------

GRID = every(0.2)
STOPPED = 1_795_000_000.0  # the last tick fired before the worker stopped
BACK = STOPPED + 10.05  # the worker is back 10 s later


def fired_after_resume(policy: str, grid: every = GRID) -> list[float]:
    """The ticks a beat fires from BACK until BACK + 0.3 s, waking late by 1 ms."""
    r = resume(grid, policy, STOPPED, BACK)
    fired = [] if r.fire is None else [r.fire]
    last, now = r.last_run_at, BACK
    while now < BACK + 0.3:
        p = plan(last, now, grid.seconds, grid.within)
        if p.due:
            assert p.tick_at is not None
            fired.append(p.tick_at)
            last = p.tick_at
        now += p.wait + 0.001 if not p.due or p.wait else 0
    return fired


def test_catch_up_all_fires_every_missed_tick_with_its_own_time() -> None:
    fired = fired_after_resume("all")
    missed = [STOPPED + 0.2 * k for k in range(1, 51)]  # up to BACK
    assert fired[: len(missed)] == [pytest.approx(t) for t in missed]
    assert fired[len(missed)] == pytest.approx(STOPPED + 0.2 * 51)  # then on the grid


def test_catch_up_latest_fires_only_the_most_recent_missed_tick() -> None:
    fired = fired_after_resume("latest")
    assert fired[0] == pytest.approx(STOPPED + 10.0)
    assert fired[1:] == [pytest.approx(STOPPED + 10.2)]


def test_catch_up_none_goes_on_from_the_next_tick() -> None:
    assert fired_after_resume("none") == [pytest.approx(STOPPED + 10.2)]


def test_catch_up_windows_bound_all_and_latest() -> None:
    # Given a window of 5 s, shorter than the 10 s the worker was down
    grid = every(0.2, within=5.0)
    # Then "all" fires only the missed ticks of the last 5 s, and "latest" its one
    fired = fired_after_resume("all", grid)
    assert fired[0] == pytest.approx(BACK - 5.0 + 0.15)  # the oldest tick within 5 s
    assert fired_after_resume("latest", every(0.2, within=0.01)) == [pytest.approx(STOPPED + 10.2)]


def test_resume_counts_the_missed_ticks_and_needs_a_last_tick() -> None:
    assert resume(GRID, "none", STOPPED, BACK).missed == 50
    assert resume(GRID, "all", None, BACK) == Resumed(BACK)  # never fired: from now
    assert resume(GRID, "latest", BACK - 0.01, BACK) == Resumed(BACK - 0.01)  # none missed


def test_every_keeps_its_window_through_pickling_and_equality() -> None:
    s = every(2.0, within=30.0)
    assert pickle.loads(pickle.dumps(s)) == s
    assert s != every(2.0)
    assert every().with_default(1.0, 30.0) == every(1.0, within=30.0)


def test_a_tick_is_late_once_the_next_tick_is_due() -> None:
    grid = every(1)
    assert not grid.late(10.0, 10.0)
    assert not grid.late(10.0, 11.0)  # on the next tick's time: not yet
    assert grid.late(10.0, 11.001)
