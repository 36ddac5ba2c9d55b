"""Unit tests: when beat wakes for a grid entry, and which tick it hands over (no services)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from pubtasks.beat import Scheduler, at, changed
from pubtasks.celery import App
from pubtasks.control import POLL
from pubtasks.records import ResumePoint
from pubtasks.resuming import going_on
from pubtasks.schedule import Resumed, Run, every
from pubtasks.settings import Settings
from pubtasks.stats import Stats

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

    def _watch(self, force: bool = False) -> None:
        pass  # nor run-time entries

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


class Instant(Recording):
    """A recording scheduler whose send takes no time."""

    def _send_each(self, producer: Any) -> None:
        while self._unsent:
            tick = self._unsent.popleft()
            self.sent.append((tick.entry.name, tick.scheduled_at))


def test_every_entry_due_at_an_instant_is_fired_in_one_wake(tmp_path: Path) -> None:
    # Given 600 entries every(1): all due at the same instants
    app = App("test_beat_burst", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {
        f"e{i:03d}": {"task": "pubtasks.publish", "schedule": every()} for i in range(600)
    }
    app.use_settings(Settings(publish_interval=1.0))
    s = Instant(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        deadline = time.monotonic() + 10
        while not s.sent:  # Celery's beat service calls tick, then sleeps what it says
            assert time.monotonic() < deadline, "no tick fired"
            time.sleep(max(s.tick(), 0.0))
    finally:
        s.close()
    # Then the one wake that fired any fired them all, each with the instant's time
    # (Celery's own tick sends one due task per call)
    assert sorted(name for name, _ in s.sent) == [f"e{i:03d}" for i in range(600)]
    assert len({at for _, at in s.sent}) == 1


def test_an_entry_has_one_tick_in_a_numbering_run(scheduler: Recording) -> None:
    # Given a catch-up queue: two ticks of one entry among others, none numbered yet
    from pubtasks.beat import Unsent  # noqa: PLC0415

    grid = scheduler.schedule["grid"]
    other = changed(grid, name="other")
    scheduler._unsent.extend(
        [Unsent(grid, 1.0, 1), Unsent(other, 1.0, 1), Unsent(grid, 2.0, 1), Unsent(other, 2.0, 1)]
    )
    # Then a numbering run stops at the entry's second tick: it is numbered only once the
    # one before it was sent and recorded (a beat taking the lock fires again only the
    # latest tick numbered; earlier ones numbered and unsent would be lost)
    run = scheduler._unnumbered_run()
    assert [(u.entry.name, u.scheduled_at) for u in run] == [("grid", 1.0), ("other", 1.0)]


# -- where a beat taking the lock goes on from, and the ticks it skips -------------------


def test_a_tick_numbered_but_not_recorded_sent_is_fired_again_whatever_the_policy() -> None:
    grid = every(1.0, within=5.0)
    # Given the last tick recorded sent at 100 s, and 101 numbered by a beat that died
    point = ResumePoint(last="100.0", numbered="e@101000 7")
    for policy in ("all", "latest", "none"):
        again, r = going_on(grid, policy, point, None, now=104.5)
        # Then 101 is fired again (with its number), and the policy applies after it
        assert again == 101.0, policy
        assert r.missed == 3, policy  # 102, 103, 104
    assert going_on(grid, "none", point, None, 104.5)[1].skipped == (
        Run("catch_up", 102.0, 104.0, 3),
    )
    # A tick numbered that was recorded sent, or that this beat still holds, is not
    assert (
        going_on(grid, "none", ResumePoint(last="101.0", numbered="e@101000 7"), None, 104.5)[0]
        is None
    )
    again, r = going_on(grid, "none", point, 102.0, 104.5)
    assert again is None and r.skipped == (Run("catch_up", 103.0, 104.0, 2),)


def test_ticks_due_while_paused_are_skipped_paused_when_a_beat_takes_the_lock() -> None:
    grid = every(1.0, within=60.0)
    # Paused still: every missed tick is skipped, paused
    _, r = going_on(grid, "all", ResumePoint(last="100.0", paused=True), None, 110.5)
    assert r == Resumed(110.0, missed=10, skipped=(Run("paused", 101.0, 110.0, 10),))
    # Resumed at 105.5 while no beat ran: those until then are paused, the others fire
    _, r = going_on(grid, "all", ResumePoint(last="100.0", resumed_at=105.5), None, 110.5)
    assert r == Resumed(105.0, missed=10, skipped=(Run("paused", 101.0, 105.0, 5),))


@pytest.mark.integration
def test_beats_taking_the_lock_from_the_same_state_count_each_skipped_tick_once(
    tmp_path: Path, settings: Settings, stats: Stats
) -> None:
    # Given an entry with catch_up none whose last tick was sent 10 s ago, and one with
    # catch_up all whose last tick was 2 s ago and the one after numbered but not sent
    app = App("test_beat_resume", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {
        "none": {"task": "pubtasks.publish", "schedule": every(), "options": {"catch_up": "none"}},
        "all": {"task": "pubtasks.publish", "schedule": every()},
    }
    app.use_settings(settings)
    grid = every(settings.publish_interval)
    last = grid.latest(0, time.time() - 10)
    assert last is not None
    stats.ledger.record("none", last, 1, 1, now=last)
    recent = grid.following(time.time() - 2)
    stats.ledger.record("all", recent, 2, 1, now=recent)
    stats.tick_number("all", grid.following(recent))
    # When two beats take the lock one after the other from that state
    beats = [Scheduler(app=app, schedule_filename=str(tmp_path / f"beat-{i}")) for i in (1, 2)]
    try:
        for beat in beats:
            beat._resume()
        # Then "all" skipped nothing: each beat fires its numbered tick again (with its
        # number), then the others
        for beat in beats:
            assert [u.scheduled_at for u in beat._unsent if u.entry.name == "all"] == [
                grid.following(recent)
            ]
    finally:
        for beat in beats:
            beat._unsent.clear()
            beat.close()
    entries = stats.snapshot().entries
    assert "all" not in entries or entries["all"].skipped == 0
    # and each missed tick of "none" up to where the last beat went on from is counted
    # skipped once, catch_up, in records that follow one another without overlap
    went_on = float(stats.client.get(stats.keys.beat_last("none")) or 0)
    due = round((went_on - last) / settings.publish_interval)
    assert due >= 45
    e = entries["none"]
    assert (e.skipped, e.skipped_catch_up) == (due, due)
    records = sorted(stats.skips("none"), key=lambda s: s.first)
    assert records[0].first == pytest.approx(last + settings.publish_interval)
    assert records[-1].last == went_on
    assert sum(r.count for r in records) == due
    for a, b in itertools.pairwise(records):
        assert b.first == pytest.approx(a.last + settings.publish_interval)


@pytest.mark.integration
def test_a_beat_stalled_past_the_window_counts_the_ticks_it_passes_over(
    tmp_path: Path, settings: Settings, stats: Stats
) -> None:
    # Given a leading beat whose entry (a 2 s window) last fired 10 s ago: it stalled
    app = App("test_beat_stall", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {
        "e": {"task": "pubtasks.publish", "schedule": every(), "options": {"catch_up_within": 2}}
    }
    app.use_settings(settings)
    s = Scheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        grid = s.schedule["e"].schedule
        stalled = grid.latest(0, time.time() - 10)
        s.schedule["e"] = changed(s.schedule["e"], last_run_at=at(stalled))
        # When it fires the entry: the oldest tick within the window
        s.apply_async(s.schedule["e"], advance=True)
        [tick] = list(s._unsent)
        s._send_each(s.producer)
    finally:
        s.close()
    # Then the ticks it passed over are counted skipped, window, once, in one record
    passed = round((tick.scheduled_at - stalled) / settings.publish_interval) - 1
    assert passed >= 35  # 8 s of 0.2 s ticks
    [record] = stats.skips("e")
    assert (record.reason, record.count) == ("window", passed)
    assert record.first == pytest.approx(grid.following(stalled))
    assert record.last == pytest.approx(tick.scheduled_at - settings.publish_interval)
    e = stats.snapshot().entries["e"]
    assert (e.ticks, e.skipped, e.skipped_window) == (1, passed, passed)
