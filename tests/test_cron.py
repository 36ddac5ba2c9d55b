"""Unit tests: crontab entries in a named time zone, across the daylight-saving changes.

Each test drives beat's planner (``Grid.plan``) with a fixed, simulated clock through
Europe/Berlin's change day, and checks the instants it fires (the ticks'
``scheduled_at``, in UTC) and the local times they stand for.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab

from pubtasks.cron import Cron, instant, zone_of
from pubtasks.schedule import every

BERLIN = ZoneInfo("Europe/Berlin")
#: 2026's changes: clocks go from 02:00 CET to 03:00 CEST, and from 03:00 CEST to 02:00 CET.
SPRING = datetime(2026, 3, 29, tzinfo=BERLIN)
FALL = datetime(2026, 10, 25, tzinfo=BERLIN)


def fired(spec: crontab, day: datetime, late: float = 0.004) -> list[datetime]:
    """Every tick beat fires from 22:00 the evening before ``day`` to 06:00 on it,
    waking ``late`` seconds after each wait it asked for (a fixed, simulated clock)."""
    cron = Cron(spec, BERLIN)
    start = (day - timedelta(hours=2)).timestamp()
    end = (day + timedelta(hours=6)).timestamp()
    last, now, out = datetime.fromtimestamp(start, UTC), start, []
    while now < end:
        p = cron.plan(last, now)
        if p.due:
            assert p.tick_at is not None
            out.append(datetime.fromtimestamp(p.tick_at, UTC))
            last = out[-1]
        now += p.wait + late
    return out


def local(ticks: list[datetime]) -> list[str]:
    return [t.astimezone(BERLIN).strftime("%H:%M %Z") for t in ticks]


def test_spring_forward_fires_a_skipped_local_time_once_at_the_jump() -> None:
    ticks = fired(crontab(minute=30, hour=2), SPRING)
    # 02:30 does not exist on that day: it fires once, when the clocks jump (01:00 UTC)
    assert ticks == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]
    assert local(ticks) == ["03:00 CEST"]


def test_spring_forward_fires_three_o_clock_once() -> None:
    ticks = fired(crontab(minute=0, hour=3), SPRING)
    assert ticks == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]


def test_spring_forward_every_15_minutes_neither_skips_nor_doubles() -> None:
    ticks = fired(crontab(minute="*/15"), SPRING)
    # 15 real minutes apart all night, across the jump: 01:45 CET, then 03:00 CEST
    gaps = {b - a for a, b in itertools.pairwise(ticks)}
    assert gaps == {timedelta(minutes=15)}
    assert "01:45 CET" in local(ticks)
    assert local(ticks)[local(ticks).index("01:45 CET") + 1] == "03:00 CEST"
    assert len(ticks) == 8 * 4 - 1 - 4  # 22:15 to 05:45, less the hour that does not exist


def test_fall_back_fires_a_doubled_local_time_once_at_its_first_occurrence() -> None:
    ticks = fired(crontab(minute=30, hour=2), FALL)
    assert ticks == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]
    assert local(ticks) == ["02:30 CEST"]


def test_fall_back_fires_three_o_clock_once() -> None:
    ticks = fired(crontab(minute=0, hour=3), FALL)
    assert ticks == [datetime(2026, 10, 25, 2, 0, tzinfo=UTC)]
    assert local(ticks) == ["03:00 CET"]


def test_fall_back_every_15_minutes_fires_each_local_time_once() -> None:
    ticks = fired(crontab(minute="*/15"), FALL)
    names = local(ticks)
    # Each local time once: the repeated 02:00-02:45 (CET) are not fired again
    assert len(names) == len({n[:5] for n in names}) == 8 * 4 - 1  # 22:15 to 05:45
    assert names[names.index("02:45 CEST") + 1] == "03:00 CET"


@pytest.mark.parametrize("day", [SPRING, FALL, datetime(2026, 6, 1, tzinfo=BERLIN)])
def test_a_crontab_tick_is_its_true_instant_in_utc(day: datetime) -> None:
    # Given an entry at 05:00 Berlin time
    [tick] = fired(crontab(minute=0, hour=5), day)
    # Then the tick's time is the UTC instant of 05:00 in Berlin on that day
    assert tick == datetime(day.year, day.month, day.day, 5, tzinfo=BERLIN).astimezone(UTC)
    assert tick.timestamp() == int(tick.timestamp())


def test_a_late_beat_still_fires_each_tick_once_with_its_own_time() -> None:
    # Given beat waking 40 s late every time (under the 60 s catch-up window)
    ticks = fired(crontab(minute="*/15"), SPRING, late=40.0)
    assert len(ticks) == 27
    assert all(t.second == 0 and t.minute % 15 == 0 for t in ticks)


def test_the_jump_is_found_for_a_zone_with_a_half_hour_change() -> None:
    # Lord Howe Island moves its clocks by 30 minutes: 02:00 -> 02:30 on 2026-10-04
    zone = ZoneInfo("Australia/Lord_Howe")
    at = instant(datetime(2026, 10, 4, 2, 15), zone)
    assert at.astimezone(zone).replace(tzinfo=None) == datetime(2026, 10, 4, 2, 30)


def test_the_zone_is_celerys_unless_nowfun_says_otherwise() -> None:
    assert zone_of(crontab(), BERLIN) is BERLIN
    tokyo = ZoneInfo("Asia/Tokyo")
    assert zone_of(crontab(nowfun=lambda: datetime.now(tokyo)), BERLIN) is tokyo


def test_a_crontab_that_matches_no_date_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a horizon of one year, and 29 February (next in 2028) from 2026
    monkeypatch.setattr("pubtasks.cron.YEARS", 1)
    spec = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    with pytest.raises(ValueError, match="matches no date in the next 1 years"):
        Cron(spec, BERLIN).following(SPRING.timestamp())


def test_describe_names_the_fields_and_the_zone() -> None:
    assert Cron(crontab(minute="*/15", hour="2"), BERLIN).describe() == (
        "crontab */15 2 * * * (Europe/Berlin)"
    )
    assert every(0.5).describe() == "every 0.5 s"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (crontab(), "* * * * *"),
        (
            crontab(minute=0, hour="9-17", day_of_week="mon-fri"),
            "0 9,10,11,12,13,14,15,16,17 * * 1,2,3,4,5",
        ),
        (crontab(minute="*/10", day_of_month=1, month_of_year="*/3"), "*/10 * 1 */3 *"),
    ],
)
def test_describe_writes_the_fields_as_cron_does(spec: crontab, expected: str) -> None:
    assert Cron(spec, UTC).describe() == f"crontab {expected} (UTC)"


def test_the_latest_missed_tick_of_a_frequent_crontab_a_year_on_is_found_at_once() -> None:
    # Given an entry every minute whose last tick was a year before now
    cron = Cron(crontab(), BERLIN)
    now = FALL.timestamp() + 90.5
    # Then the newest missed tick is the last whole minute, found without a year's ticks
    assert cron.latest(now - 366 * 86400, now) == FALL.timestamp() + 60
    # And a yearly one, two years on, is its last occurrence
    yearly = Cron(crontab(minute=0, hour=0, day_of_month=1, month_of_year=1), BERLIN)
    assert (
        yearly.latest(now - 2 * 366 * 86400, now) == datetime(2026, 1, 1, tzinfo=BERLIN).timestamp()
    )
    assert yearly.latest(now - 60, now) is None
