"""Unit tests: when beat wakes for a grid entry (no services)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from celery import Celery
from celery.beat import ScheduleEntry

from pubtasks.beat import Scheduler
from pubtasks.schedule import every


def test_after_a_tick_beat_wakes_at_the_next_grid_point_not_later() -> None:
    # Given a grid entry whose tick was just fired, and a wait measured before the send
    app = Celery("test_beat", set_as_current=False)
    scheduler = Scheduler(app=app, lazy=True, schedule_filename="unused")
    interval = 10.0  # long: the next grid point stays ahead while the test runs
    fired = math.floor(time.time() / interval) * interval
    entry = ScheduleEntry(
        name="grid",
        task="pubtasks.publish",
        schedule=every(interval),
        last_run_at=datetime.fromtimestamp(fired, UTC),
        app=app,
    )
    stale_wait = fired + interval - (time.time() - 0.003)  # measured 3 ms before now
    # When Celery asks when the entry is next due
    when = scheduler._when(entry, stale_wait)
    # Then it is the next grid point (Celery's own sum would be 3 ms past it)
    assert abs(when - (fired + interval)) < 0.001
    # ... and "now" (a wait of 0) is still Celery's own now
    assert abs(scheduler._when(entry, 0) - time.time()) < 0.05
