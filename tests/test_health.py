"""Unit tests: the health verdict, from intervals and last-confirm times."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab

from pubtasks.health import intervals, verdicts
from pubtasks.schedule import every
from pubtasks.stats import Counts


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


@pytest.mark.parametrize(
    ("last_confirmed_at", "healthy", "reason"),
    [
        (99.0, True, "e: last confirm 1.0 s ago"),
        (97.0, True, "e: last confirm 3.0 s ago"),  # exactly three intervals: still fine
        (96.9, False, "e: last confirm 3.1 s ago, more than 3 x 1 s"),
        (None, False, "e: no confirmed publish yet"),
    ],
)
def test_an_entry_is_late_after_three_intervals(
    last_confirmed_at: float | None, healthy: bool, reason: str
) -> None:
    seen = {} if last_confirmed_at is None else {"e": Counts(last_confirmed_at=last_confirmed_at)}
    [verdict] = verdicts({"e": 1.0}, seen, now=100.0)
    assert verdict.healthy is healthy
    assert verdict.reason.startswith(reason)


def test_a_paused_entry_is_reported_paused_not_unhealthy() -> None:
    # Given an entry paused 30 s ago, whose last confirm is long past
    seen = {"e": Counts(acked=1, published=1, last_confirmed_at=10.0)}
    [verdict] = verdicts({"e": 1.0}, seen, now=100.0, paused={"e": 70.0})
    assert verdict.healthy
    assert verdict.reason == "e: paused 30.0 s ago"


def test_a_resumed_entry_has_three_intervals_from_its_resume() -> None:
    seen = {"e": Counts(acked=1, published=1, last_confirmed_at=10.0)}
    [fresh] = verdicts({"e": 1.0}, seen, now=100.0, resumed={"e": 99.0})
    assert fresh.healthy
    assert fresh.reason == "e: resumed 1.0 s ago"
    [late] = verdicts({"e": 1.0}, seen, now=100.0, resumed={"e": 90.0})
    assert not late.healthy
