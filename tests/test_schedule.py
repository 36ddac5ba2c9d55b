"""Unit tests: the wall-clock grid schedule's maths."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest
from celery.schedules import crontab

from pubtasks.cron import grid_of
from pubtasks.defaults import CATCH_UP_WITHIN
from pubtasks.schedule import Plan, Resumed, Run, every, jumped, plan, resume


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


# -- every missed tick is fired or skipped, with its reason, once ------------------------


def ticks(first: float, count: int, interval: float = 0.2) -> list[float]:
    return [round(first + interval * k, 6) for k in range(count)]


def accounted(grid: every, r: Resumed, last: float, now: float) -> list[tuple[str, float]]:
    """Each missed tick in (last, now] with what became of it: a reason, or "fired"
    (fired at once, or fired by plan_ticks from last_run_at as a running beat would)."""
    out = [("fired", r.fire)] if r.fire is not None else []
    for run in r.skipped:
        out += [(run.reason, t) for t in ticks(run.first, run.count, grid.seconds)]
        assert round(run.first + grid.seconds * (run.count - 1), 6) == pytest.approx(run.last)
    last_run_at = r.last_run_at
    while True:
        p = plan(last_run_at, now, grid.seconds, grid.within)
        if not p.due:
            break
        assert p.tick_at is not None
        assert p.tick_at == pytest.approx(grid.following(last_run_at)), "plan passed over a tick"
        out.append(("fired", p.tick_at))
        last_run_at = p.tick_at
    return sorted(out, key=lambda x: x[1])


@pytest.mark.parametrize("policy", ["all", "latest", "none"])
@pytest.mark.parametrize("down", [0.5, 4.9, 5.0, 5.1, 10.05, 3600.0])
@pytest.mark.parametrize("paused", [None, "during", "still"])
def test_resume_accounts_for_every_missed_tick_once(
    policy: str, down: float, paused: str | None
) -> None:
    # Given a grid of 0.2 s with a 5 s window, down for `down` seconds, maybe paused for
    # the first half of it, or paused still
    grid = every(0.2, within=5.0)
    now = STOPPED + down
    paused_until = {None: None, "during": STOPPED + down / 2, "still": now}[paused]
    r = resume(grid, policy, STOPPED, now, paused_until)
    # Then every grid point missed is fired or skipped, each once, in order
    got = accounted(grid, r, STOPPED, now)
    missed = ticks(STOPPED + 0.2, r.missed)
    assert [t for _, t in got] == [pytest.approx(t) for t in missed]
    assert sum(run.count for run in r.skipped) + sum(1 for w, _ in got if w == "fired") == r.missed
    # and each for its reason: paused while paused, window when older than the window
    for why, t in got:
        if paused_until is not None and t <= paused_until:
            assert why == "paused", (why, t)
        elif why == "window":
            assert now - t > grid.within
        elif why == "fired":
            assert now - t <= grid.within
            assert policy == "all" or t == missed[-1]
        else:
            assert why == "catch_up" and policy != "all"
            assert policy == "none" or now - t <= grid.within


def test_resume_splits_the_missed_ticks_by_reason() -> None:
    grid = every(1.0, within=5.0)
    last, now = 100.0, 120.5  # ticks 101..120 missed; the window holds 116..120
    assert resume(grid, "all", last, now) == Resumed(115.0, missed=20, skipped=(
        Run("window", 101.0, 115.0, 15),
    ))  # fmt: skip
    assert resume(grid, "latest", last, now) == Resumed(120.0, fire=120.0, missed=20, skipped=(
        Run("window", 101.0, 115.0, 15), Run("catch_up", 116.0, 119.0, 4),
    ))  # fmt: skip
    assert resume(grid, "none", last, now) == Resumed(120.0, missed=20, skipped=(
        Run("catch_up", 101.0, 120.0, 20),
    ))  # fmt: skip
    # The latest too old to fire: all are window
    assert resume(every(1.0, within=0.2), "latest", last, now).skipped == (
        Run("window", 101.0, 120.0, 20),
    )
    # Paused until 110.5 (resumed then, while no beat ran): those are paused, the rest
    # as the policy says; paused still: all paused
    assert resume(grid, "all", last, now, paused_until=110.5).skipped == (
        Run("paused", 101.0, 110.0, 10), Run("window", 111.0, 115.0, 5),
    )  # fmt: skip
    assert resume(grid, "none", last, now, paused_until=now) == Resumed(120.0, missed=20, skipped=(
        Run("paused", 101.0, 120.0, 20),
    ))  # fmt: skip
    # A resume older than the last tick changes nothing
    assert resume(grid, "none", last, now, paused_until=99.0).skipped == (
        Run("catch_up", 101.0, 120.0, 20),
    )


def test_a_crontab_s_skipped_ticks_are_counted_one_by_one() -> None:
    hourly = grid_of(crontab(minute=0), 1.0, UTC, 600.0)
    assert hourly is not None
    last = datetime(2026, 3, 1, 0, 0, tzinfo=UTC).timestamp()
    now = last + 10 * 3600 + 60  # ten hours missed, the newest 60 s ago
    r = resume(hourly, "latest", last, now)
    assert r.fire == last + 10 * 3600
    assert r.skipped == (Run("window", last + 3600, last + 9 * 3600, 9),)


def test_a_running_beat_counts_the_ticks_it_passes_over_for_the_window() -> None:
    grid = every(1.0, within=5.0)
    assert jumped(grid, 100.0, 101.0) is None  # the next tick: none passed over
    assert jumped(grid, 100.3, 101.0) is None  # from a start off the grid
    # A beat stalled from 100 to 120.5 fires 115.5's oldest tick within the window, 116
    tick = plan(100.0, 120.5, 1.0, 5.0).tick_at
    assert tick == 116.0
    assert jumped(grid, 100.0, tick) == Run("window", 101.0, 115.0, 15)
