"""A drift-free interval schedule for Celery beat, anchored to the wall-clock grid.

Celery's ``timedelta`` schedule runs "interval after the last run", so every
late wake-up of beat pushes all later ticks back (the pika example drifts the
same way: it schedules the next publish after the current one). Here tick k
is due at exactly ``k * interval`` seconds since the epoch, whenever beat
actually wakes, and its scheduled time is that grid point.

The maths is pure and works in integer microseconds, so no float error
accumulates: ``plan()`` decides, ``every`` adapts it to Celery's schedule API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, schedstate

US = 1_000_000
#: Beat may wake this early (timer granularity) and still fire the tick.
EARLY_US = 200
#: When beat is this many ticks behind (it was down, not merely slow), skip to the next tick.
MAX_CATCH_UP = 1000


def to_us(seconds: float) -> int:
    return round(seconds * US)


def slot(t_us: int, interval_us: int) -> int:
    """The index of the latest grid tick at or before ``t_us`` (allowing an early wake)."""
    return (t_us + EARLY_US) // interval_us


@dataclass(frozen=True)
class Plan:
    """What beat should do now: fire ``tick_at`` (when due), then wait ``wait`` seconds."""

    due: bool
    tick_at: float | None
    wait: float


def plan(last_tick: float, now: float, interval: float) -> Plan:
    """Decide the next tick after the one fired at (or the start recorded as) ``last_tick``.

    Ticks missed while beat was briefly busy are fired one after another, each
    with its own grid time, so none is lost; after a long stall (more than
    ``MAX_CATCH_UP`` ticks) beat moves on to the next future tick instead of bursting.
    """
    iv = to_us(interval)
    if iv <= 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    now_us = to_us(now)
    current = slot(now_us, iv)
    following = slot(to_us(last_tick), iv) + 1
    if current - following > MAX_CATCH_UP:
        following = current + 1
    if following <= current:
        behind = following < current
        wait_us = 0 if behind else (current + 1) * iv - now_us
        return Plan(True, following * iv / US, wait_us / US)
    return Plan(False, None, (following * iv - now_us) / US)


def next_at(last_tick: float, now: float, interval: float) -> float:
    """When the tick after ``last_tick`` is due: its grid time, or ``now`` if that has come."""
    p = plan(last_tick, now, interval)
    return now if p.due else now + p.wait


class every(BaseSchedule):  # type: ignore[misc]  # noqa: N801 - named like celery's own ``crontab`` and ``schedule``
    """Fire every ``seconds`` on the wall-clock grid; ``every()`` uses PUBLISH_INTERVAL.

    ``PUBLISH_INTERVAL`` is read when beat starts, not when celeryconfig is imported.
    """

    def __init__(self, seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._seconds = seconds

    @property
    def fixed(self) -> float | None:
        """The interval given to ``every(seconds)``; None for ``every()`` (PUBLISH_INTERVAL)."""
        return self._seconds

    @property
    def seconds(self) -> float:
        if self._seconds is not None:
            return self._seconds
        from pubtasks import settings

        return settings.current().publish_interval

    def plan(self, last_run_at: datetime, now: float | None = None) -> Plan:
        return plan(last_run_at.timestamp(), time.time() if now is None else now, self.seconds)

    def next_at(self, last_run_at: datetime, now: float) -> float:
        return next_at(last_run_at.timestamp(), now, self.seconds)

    def is_due(self, last_run_at: datetime) -> schedstate:
        p = self.plan(last_run_at)
        return schedstate(p.due, p.wait)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        p = self.plan(last_run_at)
        return timedelta(seconds=0 if p.due else p.wait)

    def __repr__(self) -> str:
        return "<every PUBLISH_INTERVAL>" if self._seconds is None else f"<every {self._seconds}s>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self._seconds,)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, every):
            return self._seconds == other._seconds
        return NotImplemented

    def __hash__(self) -> int:
        return hash((every, self._seconds))
