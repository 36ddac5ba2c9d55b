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

from pubtasks.defaults import CATCH_UP_WITHIN

US = 1_000_000
#: Beat may wake this early (timer granularity) and still fire the tick.
EARLY_US = 200


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


def plan(
    last_tick: float, now: float, interval: float, catch_up_within: float = CATCH_UP_WITHIN
) -> Plan:
    """Decide the next tick after the one fired at (or the start recorded as) ``last_tick``.

    Ticks missed while beat was busy or stalled are fired one after another,
    each with its own grid time, so none is lost. When the last tick is more
    than ``catch_up_within`` seconds old, beat was down rather than slow: it moves
    on to the next future tick instead of bursting, whatever the interval.
    """
    iv = to_us(interval)
    if iv <= 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    now_us, last_us = to_us(now), to_us(last_tick)
    current = slot(now_us, iv)
    following = slot(last_us, iv) + 1
    if now_us - last_us > to_us(catch_up_within):
        following = max(following, current + 1)
    if following <= current:
        behind = following < current
        wait_us = 0 if behind else (current + 1) * iv - now_us
        return Plan(True, following * iv / US, wait_us / US)
    return Plan(False, None, (following * iv - now_us) / US)


class every(BaseSchedule):  # type: ignore[misc]  # noqa: N801 - named like celery's own ``crontab`` and ``schedule``
    """Fire every ``seconds`` on the wall-clock grid; ``every()`` means PUBLISH_INTERVAL.

    ``every()`` is resolved by pubtasks' beat scheduler when it starts
    (``with_default``), so PUBLISH_INTERVAL is read then, not when celeryconfig is
    imported.
    """

    def __init__(self, seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._seconds = seconds

    @property
    def fixed(self) -> float | None:
        """The interval given to ``every(seconds)``; None for ``every()`` (PUBLISH_INTERVAL)."""
        return self._seconds

    def with_default(self, seconds: float) -> every:
        """This schedule, with ``seconds`` standing in for PUBLISH_INTERVAL if it has none."""
        return self if self._seconds is not None else every(seconds)

    @property
    def seconds(self) -> float:
        if self._seconds is None:
            raise RuntimeError(
                "every() takes PUBLISH_INTERVAL from pubtasks' beat scheduler; set "
                "beat_scheduler = 'pubtasks.beat:Scheduler' or give every() its seconds"
            )
        return self._seconds

    def plan(self, last_run_at: datetime, now: float | None = None) -> Plan:
        return plan(last_run_at.timestamp(), time.time() if now is None else now, self.seconds)

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
