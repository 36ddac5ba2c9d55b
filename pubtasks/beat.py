"""The beat scheduler: tells each publish task which tick it is.

Celery beat sends a task with the arguments of its schedule entry and
nothing about *when* it was due. This scheduler adds ``entry`` (the entry's
name) and ``scheduled_at`` (the tick's time on the schedule, not the time beat
happened to wake) to every ``pubtasks.publish`` it sends, and ``number``,
the message number it allocates in Redis. The publish task derives the
message's stable ``message_id`` from the first two; a retry or redelivery of
the task carries the same three.

For ``every`` entries the scheduler records the tick's grid time as the
entry's ``last_run_at``, so the next tick is the next grid point and a late
wake-up neither drifts nor skips a tick. At start, grid entries begin from
"now": no burst of ticks that fell due while beat was down.
"""

from __future__ import annotations

import logging
import time
from copy import copy
from datetime import UTC, datetime
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

from pubtasks import defaults, settings
from pubtasks.errors import StatsUnavailable
from pubtasks.schedule import every
from pubtasks.stats import Stats

log = logging.getLogger(__name__)


def due_time(entry: ScheduleEntry, now: float) -> float:
    """The scheduled time of the tick that ``entry`` is firing now."""
    if isinstance(entry.schedule, every):
        tick_at = entry.schedule.plan(entry.last_run_at, now).tick_at
        return now if tick_at is None else tick_at
    remaining: float = entry.schedule.remaining_estimate(entry.last_run_at).total_seconds()
    return now + min(remaining, 0.0)


class Scheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler, tick-aware. Set as ``beat_scheduler`` by default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tick_times: dict[str, float] = {}
        self._stats: Stats | None = None
        super().__init__(*args, **kwargs)

    def next_number(self, count: int) -> int | None:
        """The tick's first message number from Redis, or None to let the task allocate."""
        if self._stats is None:
            s = settings.current()
            self._stats = Stats.from_url(s.redis_url, s.stats_prefix)
        try:
            return self._stats.next_number(count)
        except StatsUnavailable as exc:
            log.warning("beat: %s; the task will number this tick", exc)
            return None

    def setup_schedule(self) -> None:
        super().setup_schedule()
        started = self.app.now()
        for entry in self.schedule.values():
            if isinstance(entry.schedule, every):
                entry.last_run_at = started

    def adjust(self, n: float, drift: float = 0.0) -> float:
        # Celery wakes 10 ms early and then spins until the tick is due; wake on time instead.
        return n

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        tick_at = due_time(entry, time.time())
        self._tick_times[entry.name] = tick_at
        if isinstance(entry.schedule, every):
            new = entry._next_instance(last_run_at=datetime.fromtimestamp(tick_at, UTC))
        else:
            new = next(entry)
        self.schedule[entry.name] = new
        return new

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if advance:
            self.reserve(entry)
        if entry.task == defaults.TASK_NAME:
            tick_at = self._tick_times.pop(entry.name, None)
            batch = settings.current().publish_batch
            entry = copy(entry)
            entry.kwargs = {
                **(entry.kwargs or {}),
                "entry": entry.name,
                "scheduled_at": time.time() if tick_at is None else tick_at,
                "number": self.next_number(batch),
                "batch": batch,
            }
        return super().apply_async(entry, producer=producer, advance=False, **kwargs)
