"""Crontab entries in a named time zone, exact across the daylight-saving changes.

Celery's ``crontab`` says *which local times* match; this module says *which
instants* those are, so that beat fires each matching local time exactly once
and stamps it with its true instant in UTC (the message's ``scheduled_at``). The
time zone is Celery's ``timezone`` setting, or the zone of what a crontab's
``nowfun`` returns.

On the two days a year when the clocks change, a local time may not exist, or
may exist twice. The rules, pure and tested with a fixed clock:

- **A local time the clocks jump over** (spring forward: in Europe/Berlin,
  02:00 to 02:59 on the last Sunday of March) fires once, at the instant of the
  jump, like cron: an entry at 02:30 fires at 03:00 CEST. Several matches in the
  jump (``*/15`` at 02:00, 02:15, 02:30, 02:45) are one tick, and the entry at
  03:00 that same instant is that same tick for its own entry.
- **A local time that happens twice** (fall back: 02:00 to 02:59 on the last
  Sunday of October) fires once, at its first occurrence (summer time).

So no matching local time is skipped, and none fires twice.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as clock
from typing import Any

from celery.schedules import crontab

from pubtasks.defaults import CATCH_UP_WITHIN
from pubtasks.schedule import US, Grid, every, once, to_us

#: How far ahead to look for a matching date (29 February on a Monday can be 28 years off).
YEARS = 30


def instant(naive: datetime, tz: tzinfo) -> datetime:
    """The instant (UTC) at which local wall time ``naive`` is due in ``tz``.

    Ambiguous (the hour that happens twice): the first occurrence. Nonexistent (the
    hour the clocks jump over): the instant of the jump.
    """
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # In a gap. The two folds' instants lie either side of the jump: find its second.
    a = int(naive.replace(tzinfo=tz, fold=0).timestamp())
    b = int(naive.replace(tzinfo=tz, fold=1).timestamp())
    lo, hi = min(a, b), max(a, b)  # wall(lo) < naive < wall(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, tz) > naive:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _wall(t: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


class Cron(Grid):
    """Celery's ``crontab`` ``spec``, as a ``Grid`` in time zone ``tz``."""

    def __init__(self, spec: crontab, tz: tzinfo, within: float = CATCH_UP_WITHIN) -> None:
        super().__init__()
        self.spec, self.tz, self.within = spec, tz, within
        self._hours = sorted(spec.hour)
        self._minutes = sorted(spec.minute)

    def _day_matches(self, day: date) -> bool:
        s = self.spec
        # Celery's crontab: every field must match; Sunday is day 0.
        return (
            day.month in s.month_of_year
            and day.day in s.day_of_month
            and day.isoweekday() % 7 in s.day_of_week
        )

    def next_after(self, after: datetime) -> datetime:
        """The first instant strictly after ``after`` (aware) at which a matching local
        time is due. Raises ``ValueError`` when nothing matches within ``YEARS``."""
        wall = after.astimezone(self.tz).replace(tzinfo=None, second=0, microsecond=0)
        day = wall.date()
        for _ in range(366 * YEARS):
            if self._day_matches(day):
                for hour in self._hours:
                    if day == wall.date() and hour < wall.hour:
                        continue
                    for minute in self._minutes:
                        naive = datetime.combine(day, clock(hour, minute))
                        if naive < wall:
                            continue
                        at = instant(naive, self.tz)
                        if at > after:
                            return at
            day += timedelta(days=1)
        raise ValueError(f"{self.describe()} matches no date in the next {YEARS} years")

    def following_us(self, t_us: int) -> int:
        after = datetime.fromtimestamp(t_us // US, UTC) + timedelta(microseconds=t_us % US)
        return to_us(self.next_after(after).timestamp())

    def describe(self) -> str:
        """The five fields as cron writes them (minute hour day month weekday), and the zone."""
        s = self.spec
        fields = (
            _field(s.minute, range(60)),
            _field(s.hour, range(24)),
            _field(s.day_of_month, range(1, 32)),
            _field(s.month_of_year, range(1, 13)),
            _field(s.day_of_week, range(7)),
        )
        return f"crontab {' '.join(fields)} ({zone_name(self.tz)})"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.spec, self.tz, self.within)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Cron):
            return (self.spec, zone_name(self.tz), self.within) == (
                other.spec,
                zone_name(other.tz),
                other.within,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Cron, zone_name(self.tz), self.within))


def _field(values: set[int], full: range) -> str:
    """``*``, ``*/n`` or a list, from the values a crontab field expanded to."""
    ordered = sorted(values)
    if ordered == list(full):
        return "*"
    step = ordered[1] - ordered[0] if len(ordered) > 1 else 0
    if step > 1 and ordered == list(range(full.start, full.stop, step)):
        return f"*/{step}"
    return ",".join(str(v) for v in ordered)


def zone_name(tz: tzinfo) -> str:
    return str(getattr(tz, "key", None) or tz)


def zone_of(spec: crontab, default: tzinfo) -> tzinfo:
    """The zone a crontab's local times are in: its ``nowfun``'s, else ``default``
    (Celery's ``timezone``)."""
    if spec.nowfun is not None:
        found = spec.nowfun().tzinfo
        if found is not None:
            return found  # type: ignore[no-any-return]
    return default


def grid_of(
    schedule: Any, publish_interval: float, tz: tzinfo, within: float = CATCH_UP_WITHIN
) -> Grid | None:
    """The ``Grid`` that pubtasks' beat makes of an entry's schedule: ``every`` with
    PUBLISH_INTERVAL for ``every()``, a crontab in its zone, ``once``; None for Celery's other
    schedules (a ``timedelta``, a number, ``solar``), which beat leaves to Celery."""
    if isinstance(schedule, every):
        return schedule.with_default(publish_interval, within)
    if isinstance(schedule, crontab):
        return Cron(schedule, zone_of(schedule, tz), within)
    if isinstance(schedule, Cron):  # a run-time entry's, or from beat's schedule file
        return Cron(schedule.spec, schedule.tz, within)
    if isinstance(schedule, once):
        return once(schedule.at, within)
    return None
