"""Unit tests: when beat wakes for a grid entry, and which tick it hands over (no services)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pubtasks.beat import Scheduler
from pubtasks.celery import App
from pubtasks.control import POLL
from pubtasks.schedule import every
from pubtasks.settings import Settings

#: How long handing a tick to Celery's transport takes here: far longer than in life.
SEND = 0.1


class Recording(Scheduler):
    """pubtasks' scheduler holding the beat lock, with a slow send that records each tick."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[tuple[str, float]] = []
        super().__init__(*args, **kwargs)

    def leading(self) -> bool:
        return True

    def _take_triggers(self) -> None:
        pass  # no Redis here: these tests are about when beat wakes

    def _send_each(self, producer: Any) -> None:
        while self._unsent:
            tick = self._unsent.popleft()
            time.sleep(SEND)
            self.sent.append((tick.entry.name, tick.scheduled_at))


@pytest.fixture
def scheduler(tmp_path: Path) -> Any:
    app = App("test_beat", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"grid": {"task": "pubtasks.publish", "schedule": every()}}
    app.use_settings(Settings(publish_interval=1.0))
    s = Recording(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    yield s
    s.close()


def run_until_sent(s: Recording, ticks: int) -> float:
    """Drive beat as Celery's beat service does; return when it next wants to wake."""
    deadline = time.monotonic() + 10
    while True:
        wait = s.tick()
        if len(s.sent) >= ticks:
            return time.time() + wait
        assert time.monotonic() < deadline, "no tick fired"
        time.sleep(max(wait, 0.0))


def test_every_takes_publish_interval_and_fires_on_its_grid(scheduler: Recording) -> None:
    run_until_sent(scheduler, 2)
    [(name, first), (_, second)] = scheduler.sent
    assert name == "grid"
    assert first == pytest.approx(round(first), abs=1e-6)  # a point of the 1 s grid
    assert second == pytest.approx(first + 1.0, abs=1e-6)  # the next one, none skipped


def test_a_named_time_zone_keeps_every_on_the_utc_grid(tmp_path: Path) -> None:
    # Given Celery's timezone set to Berlin, as the nightly-command recipe does
    app = App("test_beat_tz", set_as_current=False, broker="memory://")
    app.conf.timezone = "Europe/Berlin"
    app.conf.beat_schedule = {"grid": {"task": "pubtasks.publish", "schedule": every()}}
    app.use_settings(Settings(publish_interval=1.0))
    s = Recording(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        run_until_sent(s, 2)
    finally:
        s.close()
    # Then the ticks are the same instants as in UTC: whole epoch seconds, one apart
    [(_, first), (_, second)] = s.sent
    assert first == pytest.approx(round(first), abs=1e-6)
    assert second == pytest.approx(first + 1.0, abs=1e-6)
    assert abs(first - time.time()) < 5


def test_after_a_tick_beat_wakes_at_the_next_grid_point_however_long_the_send(
    tmp_path: Path,
) -> None:
    # Given a tick whose hand-over to Celery's transport takes SEND seconds, on a grid
    # finer than beat's poll of the trigger requests (POLL)
    interval = 0.4
    assert interval < POLL
    app = App("test_beat_send", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"grid": {"task": "pubtasks.publish", "schedule": every()}}
    app.use_settings(Settings(publish_interval=interval))
    s = Recording(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        wakes_at = run_until_sent(s, 1)
    finally:
        s.close()
    [(_, fired)] = s.sent
    # Then beat next wakes at the next grid point, not SEND seconds after it (Celery
    # measures the wait before the send and adds it to the time after)
    assert wakes_at == pytest.approx(fired + interval, abs=SEND / 2)
