"""Control at run time, end to end: the real worker, the real ``pubtasks schedule``
command, the real RabbitMQ and Redis."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pubtasks.bench.waiting import wait_for
from pubtasks.ids import message_id, scheduled_at_of
from pubtasks.records import Skip
from pubtasks.schedule import every
from pubtasks.stats import Stats
from tests.helpers import Raw, Worker, caught_up, finish, take, write_config
from tests.support.ledger import failed_markers

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

INTERVAL = 0.2

TWO = """
beat_schedule = {
    "one": {"task": "pubtasks.publish", "schedule": every(0.2)},
    "two": {"task": "pubtasks.publish", "schedule": every(0.2)},
}
"""

POLICIES = """
beat_schedule = {
    name: {"task": "pubtasks.publish", "schedule": every(0.2), "options": {"catch_up": name}}
    for name in ("all", "latest", "none")
}
"""

SKIPPING = """
beat_schedule = {
    "paused": {"task": "pubtasks.publish", "schedule": every(0.2)},
    "none": {"task": "pubtasks.publish", "schedule": every(0.2), "options": {"catch_up": "none"}},
}
"""


def pubtasks(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``pubtasks`` command, run where the worker runs."""
    return subprocess.run(
        [sys.executable, "-m", "pubtasks", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def acked(stats: Stats, entry: str) -> int:
    e = stats.snapshot().entries.get(entry)
    return 0 if e is None else e.acked


def by_entry(messages: list[Raw]) -> dict[str, list[str]]:
    """Message ids per entry, in scheduled order."""
    out: dict[str, list[str]] = {}
    for m in messages:
        mid = m.properties["message_id"]
        out.setdefault(mid.rpartition("@")[0], []).append(mid)
    return {k: sorted(v, key=scheduled_at_of) for k, v in out.items()}


def gaps(ids: list[str]) -> list[float]:
    times = [scheduled_at_of(i) for i in ids]
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def test_pause_resume_and_trigger_one_entry_while_the_other_goes_on(
    worker: Worker, worker_dir: Path, worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given the real worker at 0.2 s ticks with two entries
    write_config(worker_dir, stats.keys.prefix, TWO)
    worker.start()
    wait_for(lambda: acked(stats, "one") >= 5 and acked(stats, "two") >= 5, 60, "both ticking")

    # When entry one is paused, for as long as entry two takes to publish 15 more ticks
    out = pubtasks(worker_dir, worker_env, "schedule", "pause", "one")
    paused_at = time.time()  # the pause is in Redis by now
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("paused one"), out.stdout
    two_then = acked(stats, "two")
    wait_for(lambda: acked(stats, "two") >= two_then + 15, 30, "entry two going on")
    listed = json.loads(pubtasks(worker_dir, worker_env, "schedule", "list", "--json").stdout)
    health = pubtasks(worker_dir, worker_env, "health")

    # ... then resumed, and entry two triggered by hand once
    resuming_at = time.time()  # the pause is still in Redis until after this
    assert pubtasks(worker_dir, worker_env, "schedule", "resume", "one").returncode == 0
    resumed_at = time.time()
    one_then = acked(stats, "one")
    wait_for(lambda: acked(stats, "one") >= one_then + 5, 30, "entry one going on")
    out = pubtasks(worker_dir, worker_env, "schedule", "trigger", "two")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not stats.client.llen(stats.keys.beat_triggers), 30, "the trigger to be fired")
    two_then = acked(stats, "two")
    wait_for(lambda: acked(stats, "two") >= two_then + 3, 30, "a few more ticks of two")
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)

    # Then the listing and the health check saw the pause
    assert listed["entries"]["one"]["paused"] is True
    assert listed["entries"]["two"]["paused"] is False
    assert listed["beat_lock"]["holder"]
    assert health.returncode == 0, health.stdout
    assert "one: paused" in health.stdout

    messages = by_entry(take(amqp_url, "text"))
    one, two = messages["one"], messages["two"]
    manual = [i for i in two if "@manual-" in i]
    grid_two = [i for i in two if "@manual-" not in i]
    # Entry one published nothing scheduled after the pause command returned (beat reads
    # the pause as it numbers each tick: within 1 s, as asked, and sooner) until the
    # resume, and then went on on its grid from its next tick, without a burst of the
    # paused ticks
    during = [i for i in one if paused_at <= scheduled_at_of(i) < resuming_at]
    assert during == [], during
    after = [i for i in one if scheduled_at_of(i) >= resuming_at]
    assert after and gaps(after) == [INTERVAL] * (len(after) - 1)
    assert scheduled_at_of(after[0]) <= resumed_at + INTERVAL
    assert len([g for g in gaps(one) if g != INTERVAL]) == 1  # one hole: the pause
    # Entry two went on throughout, on its grid, and got exactly one extra tick by hand
    assert gaps(grid_two) == [INTERVAL] * (len(grid_two) - 1)
    assert len(manual) == 1
    # The counters agree with the queue, per entry, and the invariant holds
    snap = stats.snapshot()
    for name, ids in messages.items():
        e = snap.entries[name]
        assert e.published == e.acked == len(ids) == len(set(ids)), name
    assert snap.totals.invariant_holds
    assert snap.last_message_number == len(one) + len(two)  # nothing numbered while paused
    assert "beat: one is paused; skipping its ticks" in worker.log
    assert "beat: one is resumed" in worker.log
    assert f"beat: triggered by hand: two, firing {manual[0]}" in worker.log


def test_a_restarted_worker_catches_up_as_each_entry_says(
    worker: Worker, worker_dir: Path, worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given the real worker with three entries at 0.2 s: catch_up all, latest and none
    write_config(worker_dir, stats.keys.prefix, POLICIES)
    names = ("all", "latest", "none")
    worker.start()
    wait_for(lambda: all(acked(stats, n) >= 3 for n in names), 60, "every entry ticking")
    # When it is stopped, and started again 10 s later
    assert worker.stop() == 0, worker.log[-3000:]
    stopped_at = time.time()
    wait_for(lambda: time.time() >= stopped_at + 10, 15, "10 s of downtime", 0.5)
    before = {n: acked(stats, n) for n in names}
    worker.start()
    wait_for(lambda: all(acked(stats, n) >= before[n] + 5 for n in names), 60, "ticking again")
    # (a stop while beat still catches up would leave the rest to the next start)
    wait_for(lambda: all(caught_up(stats, n) for n in names), 60, "beat to catch up", 0.05)
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)

    # Then beat counted the ticks each entry missed, and delivered: all of them, the
    # latest only, or none
    messages = by_entry(take(amqp_url, "text"))
    for name in names:
        [line] = [x for x in worker.log.splitlines() if f"beat: {name} missed" in x]
        missed = int(line.split(" missed ")[1].split()[0])
        assert missed >= 45, line  # 10 s of 0.2 s ticks, and the restart's own
        holes = [g for g in gaps(messages[name]) if g != INTERVAL]
        skipped = sum(round(g / INTERVAL) - 1 for g in holes)
        delivered = {"all": missed, "latest": 1, "none": 0}[name]
        assert missed - skipped == delivered, (name, missed, holes)
        assert len(holes) == (0 if name == "all" else 1), (name, holes)
    snap = stats.snapshot()
    assert snap.totals.invariant_holds
    assert snap.totals.published == snap.totals.acked == sum(map(len, messages.values()))
    # and counted each tick it fired once (pubtasks_ticks_total); those of "all" caught
    # up at the restart were fired late (pubtasks_ticks_late_total), but the newest
    for name in names:
        assert snap.entries[name].ticks == len(messages[name]), name
    [line] = [x for x in worker.log.splitlines() if "beat: all missed" in x]
    assert snap.entries["all"].ticks_late >= int(line.split(" missed ")[1].split()[0]) - 2


def test_a_crontab_in_a_named_time_zone_fires_on_its_local_minute(
    worker: Worker, worker_dir: Path, worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given a crontab every minute of one hour of Kathmandu's day (UTC+05:45): the hour
    # the next minute falls in there, which is another hour in UTC
    zone = ZoneInfo("Asia/Kathmandu")
    next_minute = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    hour = next_minute.astimezone(zone).hour
    assert hour != next_minute.hour
    write_config(
        worker_dir,
        stats.keys.prefix,
        f"""
from celery.schedules import crontab

timezone = "Asia/Kathmandu"
beat_schedule = {{
    "kathmandu": {{"task": "pubtasks.publish", "schedule": crontab(minute="*", hour={hour})}},
}}
""",
    )
    # When the real worker runs until it has published one tick
    worker.start()
    wait_for(lambda: acked(stats, "kathmandu") >= 1, 100, "the crontab's first tick")
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)
    # Then the tick is a whole minute, its scheduled_at the true UTC instant of a minute
    # in that hour of Kathmandu's day
    [message] = take(amqp_url, "text")
    body = json.loads(message.body)
    at = datetime.fromtimestamp(body["scheduled_at"], UTC)
    assert (at.second, at.microsecond) == (0, 0)
    assert at.astimezone(zone).hour == hour
    assert message.properties["message_id"] == f"kathmandu@{int(at.timestamp()) * 1000}"
    assert at <= datetime.fromtimestamp(body["published_at"], UTC)


def grid_points(after: float, until: float, interval: float = INTERVAL) -> list[float]:
    """The ticks of ``every(interval)`` in ``(after, until]``, by the test's own arithmetic."""
    grid, points = every(interval), []
    t = grid.following(after)
    while t <= until:
        points.append(t)
        t = grid.following(t)
    return points


def skipped_at(skips: list[Skip], t: float) -> list[str]:
    """The reasons of the skip records whose run holds tick ``t``."""
    return [s.reason for s in skips if s.first - 1e-6 <= t <= s.last + 1e-6]


def accounted(
    stats: Stats, entry: str, start: float, end: float, delivered: set[str], failed: set[str]
) -> dict[str, int]:
    """Match each grid point of ``entry`` in (start, end] to what became of it: delivered
    (consumed from RabbitMQ), failed, or a reason it was skipped, exactly one of them;
    check the entry's counters against its records and ticks due = delivered + failed +
    skipped over its whole run. How many grid points went each way."""
    skips = stats.skips(entry)
    ways: dict[str, int] = {}
    for t in grid_points(start, end):
        tick = message_id(entry, t)
        found = [w for w, ids in (("delivered", delivered), ("failed", failed)) if tick in ids]
        found += skipped_at(skips, t)
        assert len(found) == 1, (entry, t, found)
        ways[found[0]] = ways.get(found[0], 0) + 1
    # Each record's count is its grid points, and the counters are the records'
    for s in skips:
        assert s.count == len(grid_points(s.first - INTERVAL / 2, s.last)), s
    e = stats.snapshot().entries[entry]
    assert e.skipped == sum(s.count for s in skips)
    for reason, n in e.skipped_by().items():
        assert n == sum(s.count for s in skips if s.reason == reason), (entry, reason)
    # So that over the whole run, ticks due = delivered + failed + skipped
    mine = {i for i in delivered if i.rpartition("@")[0] == entry}
    failed_mine = {i for i in failed if i.rpartition("@")[0] == entry}
    times = [scheduled_at_of(i) for i in mine | failed_mine]
    times += [s.first for s in skips] + [s.last for s in skips]
    due = len(grid_points(min(times) - INTERVAL / 2, max(times)))
    assert due == len(mine) + len(failed_mine) + e.skipped, (entry, due, e)
    return ways


def test_every_grid_point_is_delivered_failed_or_skipped_with_its_reason(
    worker: Worker, worker_dir: Path, worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given the real worker with two entries at 0.2 s, one with catch_up none
    write_config(worker_dir, stats.keys.prefix, SKIPPING)
    worker.start()
    wait_for(lambda: acked(stats, "paused") >= 3 and acked(stats, "none") >= 3, 60, "ticking")
    start = time.time()  # the run's own clock, from here

    def skipped(entry: str, reason: str) -> int:
        e = stats.snapshot().entries.get(entry)
        return 0 if e is None else e.skipped_by()[reason]

    # When entry "paused" is paused for 10 of its ticks, then resumed
    assert pubtasks(worker_dir, worker_env, "schedule", "pause", "paused").returncode == 0
    wait_for(lambda: skipped("paused", "paused") >= 10, 30, "10 ticks skipped while paused")
    assert pubtasks(worker_dir, worker_env, "schedule", "resume", "paused").returncode == 0
    then = acked(stats, "paused")
    wait_for(lambda: acked(stats, "paused") >= then + 5, 30, "entry paused going on")
    # and the worker is stopped for 3 s and started again (catch_up "all" and "none")
    assert worker.stop() == 0, worker.log[-3000:]
    stopped_at = time.time()
    wait_for(lambda: time.time() >= stopped_at + 3, 10, "3 s of downtime", 0.5)
    before = {n: acked(stats, n) for n in ("paused", "none")}
    worker.start()
    wait_for(lambda: all(acked(stats, n) >= before[n] + 5 for n in before), 60, "ticking again")
    end = time.time()  # to here

    def past_end() -> bool:  # beat's record is only a signal to stop; it is not counted
        points = stats.resume_points(["paused", "none"])
        return all((p.last_at or 0) > end for p in points.values())

    wait_for(past_end, 30, "beat to have fired or skipped every tick up to the end")
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)
    out = pubtasks(worker_dir, worker_env, "stats", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)

    # Then each grid point between start and end, for each entry, is delivered (consumed
    # from RabbitMQ), counted failed, or in a skip record, and in exactly one of them;
    # over the whole run, ticks due = delivered + failed + skipped
    delivered = {m.properties["message_id"] for m in take(amqp_url, "text")}
    failed = set(failed_markers(stats))
    paused = accounted(stats, "paused", start, end, delivered, failed)
    none = accounted(stats, "none", start, end, delivered, failed)
    assert paused.get("paused", 0) >= 10 and "catch_up" not in paused, paused
    assert none.get("catch_up", 0) >= 10 and "paused" not in none, none  # the downtime's
    assert "failed" not in paused and "failed" not in none
    assert all(s.count == 1 for s in stats.skips("paused"))  # one record per paused tick
    # and pubtasks stats --json shows the counters
    snap = stats.snapshot()
    for entry in ("paused", "none"):
        assert shown["entries"][entry]["skipped"] == snap.entries[entry].skipped > 0
    assert (
        shown["skipped"]
        == snap.totals.skipped
        == sum(snap.entries[n].skipped for n in ("paused", "none"))
    )
    assert shown["skipped_paused"] == snap.totals.skipped_paused == paused["paused"]
    assert snap.totals.invariant_holds
