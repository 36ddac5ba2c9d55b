"""Unit tests: the health verdict, each entry by its own schedule, with fixed clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab

from pubtasks import timing
from pubtasks.health import Fleet, check, intervals, schedules, verdicts
from pubtasks.records import Counts
from pubtasks.schedule import every

ALIVE = Fleet(workers=1, beat="web-1.4711.3fa2c1", since=None)


def t(text: str) -> float:
    """Seconds since the epoch of an ISO time in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def one(schedule: object, **when: object) -> dict[str, object]:
    return {"e": {"task": "pubtasks.publish", "schedule": schedule, **when}}


def judged(
    schedule: object,
    now: float,
    confirmed: float | None = None,
    fleet: Fleet = ALIVE,
    tz: str = "UTC",
    paused: dict[str, float] | None = None,
    resumed: dict[str, float] | None = None,
) -> tuple[bool, str]:
    expected = schedules(one(schedule), publish_interval=1.0, tz=ZoneInfo(tz))
    seen = {} if confirmed is None else {"e": Counts(acked=1, last_confirmed_at=confirmed)}
    [v] = verdicts(expected, seen, now, fleet, paused=paused, resumed=resumed)
    return v.healthy, v.reason


def test_intervals_come_from_every_timedelta_and_numbers_not_crontab() -> None:
    schedule = {
        "grid": {"task": "pubtasks.publish", "schedule": every()},
        "fast": {"task": "pubtasks.publish", "schedule": every(0.5)},
        "td": {"task": "pubtasks.publish", "schedule": timedelta(seconds=30)},
        "num": {"task": "pubtasks.publish", "schedule": 7},
        "nightly": {"task": "pubtasks.publish", "schedule": crontab(minute=0, hour=3)},
        "other": {"task": "somebody.else", "schedule": 1.0},
    }
    assert intervals(schedule, publish_interval=2.0) == {
        "grid": 2.0,
        "fast": 0.5,
        "td": 30.0,
        "num": 7.0,
    }


def test_every_publish_entry_is_judged_whatever_its_schedule() -> None:
    schedule = {
        "grid": {"task": "pubtasks.publish", "schedule": every()},
        "td": {"task": "pubtasks.publish", "schedule": timedelta(seconds=30)},
        "nightly": {"task": "pubtasks.publish", "schedule": crontab(minute=0, hour=3)},
        "other": {"task": "somebody.else", "schedule": 1.0},
    }
    found = schedules(schedule, publish_interval=2.0, tz=UTC)
    assert sorted(found) == ["grid", "nightly", "td"]
    after = t("2026-12-02T12:00:00.5")
    following = {name: f(after) for name, f in found.items() if f is not None}
    assert following == {
        "grid": t("2026-12-02T12:00:02"),
        "td": after + 30,  # at most one interval after any moment
        "nightly": t("2026-12-03T03:00:00"),
    }


def test_a_crontab_only_worker_is_healthy_while_it_runs_before_its_first_tick() -> None:
    # Given a daily crontab at 03:00 and a beat that took the lock at noon
    fleet = Fleet(1, "web-1.4711.3fa2c1", since=t("2026-12-02T12:00:00"))
    # Then it is healthy all afternoon and night, with no confirm at all
    healthy, reason = judged(crontab(minute=0, hour=3), t("2026-12-02T18:00:00"), fleet=fleet)
    assert healthy
    assert reason == "e: started 21600.0 s ago; next tick due in 32400.0 s"
    # ... and within the grace after its tick
    assert judged(crontab(minute=0, hour=3), t("2026-12-03T03:00:09"), fleet=fleet)[0]
    # But once the grace has passed with no confirm, it is unhealthy, and says which tick
    healthy, reason = judged(crontab(minute=0, hour=3), t("2026-12-03T03:00:11"), fleet=fleet)
    assert not healthy
    assert reason.startswith(
        "e: the tick due at 2026-12-03T03:00:00.000Z (11.0 s ago) is not confirmed within "
        "10 s (last confirm none yet)"
    )
    # ... and confirmed, it is healthy until the next day's tick
    confirmed = t("2026-12-03T03:00:00.02")
    healthy, reason = judged(
        crontab(minute=0, hour=3), t("2026-12-03T12:00:00"), confirmed, fleet=fleet
    )
    assert healthy and reason == "e: last confirm 32400.0 s ago; next tick due in 54000.0 s"


def test_a_crontab_is_judged_in_its_zone() -> None:
    # 03:00 in Berlin is 02:00 UTC in winter
    fleet = Fleet(1, "b", since=t("2026-12-02T12:00:00"))
    cron = crontab(minute=0, hour=3)
    assert judged(cron, t("2026-12-03T02:00:09"), fleet=fleet, tz="Europe/Berlin")[0]
    healthy, reason = judged(cron, t("2026-12-03T02:00:11"), fleet=fleet, tz="Europe/Berlin")
    assert not healthy and "2026-12-03T02:00:00.000Z" in reason


def test_an_hourly_entry_just_started_is_healthy_until_its_first_tick_is_due() -> None:
    fleet = Fleet(1, "b", since=t("2026-12-02T12:00:30"))
    hourly = every(3600)
    healthy, reason = judged(hourly, t("2026-12-02T12:59:00"), fleet=fleet)
    assert healthy and reason == "e: started 3510.0 s ago; next tick due in 60.0 s"
    healthy, reason = judged(hourly, t("2026-12-02T13:00:05"), fleet=fleet)
    assert healthy and reason.endswith("next tick due 5.0 s ago, within the grace")
    assert not judged(hourly, t("2026-12-02T13:00:00") + timing.HEALTH_GRACE, fleet=fleet)[0]
    # An old confirm from before the start does not change that
    old = t("2026-12-01T09:00:00")
    assert judged(hourly, t("2026-12-02T12:59:00"), old, fleet=fleet)[0]


@pytest.mark.parametrize(
    ("confirmed", "now", "healthy"),
    [
        # a confirm covers the ticks up to SKEW (1 s) after it: tick 102 is the next asked for
        (100.01, 111.9, True),  # due 9.9 s ago: within the grace
        (100.01, 112.0, False),  # unconfirmed 10 s after it was due
        (99.6, 110.5, True),  # a confirm 0.4 s before tick 100 (clocks apart) counts for it
        (99.6, 111.0, False),
    ],
)
def test_a_missed_tick_is_unhealthy_once_past_the_grace(
    confirmed: float, now: float, healthy: bool
) -> None:
    assert judged(every(1), now, confirmed, fleet=Fleet(1, "b", since=0.0))[0] is healthy


def test_an_interval_schedule_of_celery_needs_a_confirm_every_interval_plus_the_grace() -> None:
    fleet = Fleet(1, "b", since=0.0)
    assert judged(
        timedelta(seconds=30), 100.0 + 1 + 30 + timing.HEALTH_GRACE - 0.1, 100.0, fleet=fleet
    )[0]
    assert not judged(
        timedelta(seconds=30), 100.0 + 1 + 30 + timing.HEALTH_GRACE, 100.0, fleet=fleet
    )[0]
    assert not judged(7, 100.0 + 1 + 7 + timing.HEALTH_GRACE, 100.0, fleet=fleet)[0]


@pytest.mark.parametrize(
    ("fleet", "reason"),
    [
        (Fleet(0, "b", 0.0), "e: no worker is alive (no worker heartbeat in the last 10 s)"),
        (Fleet(2, None, 0.0), "e: no beat holds the beat lock: no tick is fired"),
    ],
)
def test_a_dead_fleet_is_unhealthy_whatever_the_schedule(fleet: Fleet, reason: str) -> None:
    now = t("2026-12-02T12:00:01")
    for schedule in (crontab(minute=0, hour=3), every(3600), every(1)):
        assert judged(schedule, now, now - 0.5, fleet=fleet) == (False, reason)
    # paused or not: nothing would resume it
    assert not judged(every(1), now, fleet=fleet, paused={"e": now - 5})[0]


def test_a_paused_entry_is_reported_paused_not_unhealthy() -> None:
    healthy, reason = judged(every(1), 100.0, 10.0, fleet=Fleet(1, "b", 0.0), paused={"e": 70.0})
    assert healthy and reason == "e: paused 30.0 s ago"


def test_a_resumed_entry_is_asked_for_ticks_from_its_resume() -> None:
    fleet = Fleet(1, "b", since=0.0)
    healthy, reason = judged(every(1), 100.0, 10.0, fleet=fleet, resumed={"e": 99.0})
    assert healthy and reason.startswith("e: resumed 1.0 s ago")
    assert not judged(every(1), 100.0, 10.0, fleet=fleet, resumed={"e": 85.0})[0]


def test_with_no_start_recorded_an_entry_needs_a_confirm() -> None:
    healthy, reason = judged(every(1), 100.0, fleet=ALIVE)
    assert (healthy, reason) == (False, "e: no confirmed publish yet")


def test_check_says_the_fleet_s_problem_once() -> None:
    expected = schedules(
        {
            "a": {"task": "pubtasks.publish", "schedule": every()},
            "b": {"task": "pubtasks.publish", "schedule": crontab()},
        },
        1.0,
        UTC,
    )
    dead = Fleet(0, None, None)
    assert check(expected, {}, 100.0, dead) == (
        False,
        ["no worker is alive (no worker heartbeat in the last 10 s)"],
    )
    healthy, lines = check(expected, {}, 100.0, Fleet(1, "b", 99.0))
    assert healthy and len(lines) == 2
    assert check({}, {}, 100.0, dead) == (False, ["no publish entry in beat_schedule to check"])
