"""Run-time entries end to end: the real ``celery -A pubtasks worker -B`` (two of them),
the real ``pubtasks schedule`` command, and what RabbitMQ received, counted against what
the commands asked for, not against pubtasks' own counters."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pubtasks.bench.waiting import wait_for
from pubtasks.catalog import Catalog
from pubtasks.celery import App
from pubtasks.ids import scheduled_at_of
from pubtasks.runtime import Schedules, recipe
from pubtasks.schedule import every
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from tests.helpers import Raw, Worker, beat_pid, finish, holder_group, take, write_config
from tests.test_runtime import gaps, pubtasks

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

#: The config entry ticks slowly; every key of example.# reaches the queue "text".
CONFIG = """
BINDING_KEY = "example.#"
beat_schedule = {"publish-text": {"task": "pubtasks.publish", "schedule": every(1.0)}}
"""
STEP = 0.5


def ids_of(messages: list[Raw], entry: str) -> list[str]:
    """The distinct message ids of ``entry``'s ticks, in scheduled order."""
    found = {m.properties["message_id"] for m in messages}
    return sorted((i for i in found if i.rpartition("@")[0] == entry), key=scheduled_at_of)


def acked(stats: Stats, entry: str) -> int:
    e = stats.snapshot().entries.get(entry)
    return 0 if e is None else e.acked


def ok(out: object) -> str:
    assert getattr(out, "returncode", 1) == 0, getattr(out, "stderr", out)
    return str(getattr(out, "stdout", ""))


def holder(workers: list[Worker], stats: Stats) -> Worker:
    group = wait_for(lambda: holder_group(stats), 30, "a beat lock holder")
    [found] = [w for w in workers if w.proc is not None and w.proc.pid == group]
    return found


def stop(workers: list[Worker], killed: Worker) -> None:
    """Stop both: the one whose beat was killed has stopped itself, exit 3 (its supervisor
    would start it again); the other exits 0."""
    for w in workers:
        assert w.stop() == (3 if w is killed else 0), w.log[-3000:]


def test_an_entry_added_edited_and_removed_while_two_beats_run_and_a_takeover(
    two_workers: list[Worker], worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given two real workers with -B sharing the schedule
    for w in two_workers:
        write_config(w.cwd, stats.keys.prefix, CONFIG)
        w.start()
    cwd = two_workers[0].cwd
    wait_for(lambda: acked(stats, "publish-text") >= 2, 60, "the config entry ticking")

    # When an entry is added at run time, every 0.5 s with its own routing key
    asked = time.time()
    ok(
        pubtasks(
            cwd, worker_env, "schedule", "add", "added", "--every", str(STEP),
            "--routing-key", "example.before", "--header", "x-tenant=7",
        )
    )  # fmt: skip
    added_at = time.time()
    wait_for(lambda: acked(stats, "added") >= 4, 30, "the added entry ticking")
    # ... then edited to another routing key, while the beat holding the lock is killed
    # (SIGKILL) just after: the other beat takes over, from the entries in Redis
    leader = holder(two_workers, stats)
    editing = time.time()
    ok(pubtasks(cwd, worker_env, "schedule", "edit", "added", "--routing-key", "example.after"))
    edited = time.time()
    os.kill(beat_pid(leader), signal.SIGKILL)
    survivor = next(w for w in two_workers if w is not leader)
    wait_for(lambda: holder_group(stats) == survivor.proc.pid, 30, "the takeover", 0.1)  # type: ignore[union-attr]
    then = acked(stats, "added")
    wait_for(lambda: acked(stats, "added") >= then + 4, 30, "the edited entry ticking")
    # ... and removed
    removing = time.time()
    ok(pubtasks(cwd, worker_env, "schedule", "remove", "added"))
    removed = time.time()
    wait_for(lambda: time.time() > removed + 3, 5, "3 s after the remove", 0.2)
    shown = json.loads(ok(pubtasks(cwd, worker_env, "schedule", "show", "added", "--json")))
    stop(two_workers, killed=leader)
    finish(cwd, worker_env, stats)

    messages = take(amqp_url, "text")
    ids = ids_of(messages, "added")
    key_of = {m.properties["message_id"]: m.routing_key for m in messages}
    times = [scheduled_at_of(i) for i in ids]
    # Then its first tick was due within one tick plus 1 s of the add
    assert asked < times[0] <= added_at + STEP + 1.0, (asked, times[0])
    # every tick of the grid from the first to the last was delivered, none twice
    assert gaps(ids) == [STEP] * (len(ids) - 1), gaps(ids)
    # the ticks before the edit carry the old key, those a tick after it the new one
    assert all(
        key_of[i] == "example.before" for i, t in zip(ids, times, strict=True) if t < editing
    )
    assert all(
        key_of[i] == "example.after" for i, t in zip(ids, times, strict=True) if t > edited + STEP
    )
    assert any(key_of[i] == "example.after" for i in ids)
    mine = [m for m in messages if m.properties["message_id"] in set(ids)]
    assert all(m.properties["application_headers"]["x-tenant"] == 7 for m in mine)
    # and nothing was due more than 1 s after the remove
    assert times[-1] <= removed + 1.0, (times[-1], removing, removed)
    # its counters and history stay readable; the counters equal what RabbitMQ holds
    assert shown["state"] == "removed"
    assert shown["counters"]["acked"] == len(mine)
    assert shown["last_runs"] and shown["last_runs"][0]["outcome"] == "acked"
    assert stats.snapshot().totals.invariant_holds


def test_entries_persist_across_a_restart_a_window_holds_and_a_bad_add_stores_nothing(
    worker: Worker, worker_dir: Path, worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given a real worker, and an entry added at run time
    write_config(worker_dir, stats.keys.prefix, CONFIG)
    worker.start()
    args = ("schedule", "add", "kept", "--every", str(STEP), "--routing-key", "example.kept")
    ok(pubtasks(worker_dir, worker_env, *args))
    # ... and one bounded to a window of 2 s that opens 2 s from now
    start = time.time() + 2
    end = start + 2
    window = [
        (f"--{k}", datetime.fromtimestamp(t, UTC).isoformat())
        for k, t in (("start", start), ("end", end))
    ]
    ok(
        pubtasks(
            worker_dir,
            worker_env,
            "schedule",
            "add",
            "window",
            "--every",
            str(STEP),
            *window[0],
            *window[1],
        )
    )
    wait_for(lambda: acked(stats, "kept") >= 3, 30, "the entry ticking")
    wait_for(lambda: time.time() > end + 1, 10, "the window to close", 0.1)
    window_listed = json.loads(ok(pubtasks(worker_dir, worker_env, "schedule", "list", "--json")))
    # When a bad add is refused: an exchange that is not declared
    bad = pubtasks(
        worker_dir, worker_env, "schedule", "add", "bad", "--every", "1", "--exchange", "nope"
    )
    # ... and the worker is stopped and started again
    assert worker.stop() == 0, worker.log[-3000:]
    before = acked(stats, "kept")
    worker.start()
    wait_for(lambda: acked(stats, "kept") >= before + 3, 30, "the entry ticking again")
    listed = json.loads(ok(pubtasks(worker_dir, worker_env, "schedule", "list", "--json")))
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)

    # Then the bad add exited 2 with one line naming the entry and what to do, and
    # stored nothing
    assert bad.returncode == 2
    [line] = bad.stderr.strip().splitlines()[-1:]
    assert "entry 'bad'" in line and "exchange 'nope' is not declared" in line, bad.stderr
    assert sorted(stats.client.hkeys(stats.keys.schedule_entries)) == ["kept", "window"]
    # the entry went on after the restart, from Redis
    messages = take(amqp_url, "text")
    ids = ids_of(messages, "kept")
    assert len(ids) >= before + 3
    assert listed["entries"]["kept"]["source"] == "runtime"
    assert listed["entries"]["kept"]["state"] == "active"
    assert listed["entries"]["publish-text"]["source"] == "config"
    # the window's ticks are its grid points from start to end, no other; then it is finished
    points = [k * STEP for k in range(int(start / STEP), int(end / STEP) + 2)]
    expected = [f"window@{round(p * 1000)}" for p in points if start <= p <= end]
    assert ids_of(messages, "window") == expected
    assert window_listed["entries"]["window"]["state"] == "finished"


def test_a_one_off_and_a_max_runs_entry_fire_exactly_so_across_a_sigkill(
    two_workers: list[Worker], worker_env: dict[str, str], stats: Stats, amqp_url: str
) -> None:
    # Given two real workers with -B, a one-off entry 4 s from now and one of 6 runs
    for w in two_workers:
        write_config(w.cwd, stats.keys.prefix, CONFIG)
        w.start()
    cwd = two_workers[0].cwd
    leader = holder(two_workers, stats)
    at = datetime.fromtimestamp(time.time() + 4, UTC).isoformat()
    ok(pubtasks(cwd, worker_env, "schedule", "add", "once", "--at", at))
    ok(
        pubtasks(
            cwd, worker_env, "schedule", "add", "capped", "--every", str(STEP),
            "--max-runs", "6", "--routing-key", "example.capped",
        )
    )  # fmt: skip
    # When the beat holding the lock is SIGKILLed after two runs, around the one-off's time
    wait_for(lambda: acked(stats, "capped") >= 2, 30, "two runs")
    due = datetime.fromisoformat(at).timestamp()
    wait_for(lambda: time.time() > due - 0.2, 10, "the one-off's time", 0.05)
    os.kill(beat_pid(leader), signal.SIGKILL)

    # ... the other takes over, and both go on until the entries are finished
    def finished() -> bool:
        listed = json.loads(ok(pubtasks(cwd, worker_env, "schedule", "list", "--json")))
        return all(listed["entries"][n]["state"] == "finished" for n in ("once", "capped"))

    wait_for(finished, 60, "both entries finished", 0.5)
    settle = time.time() + 3
    wait_for(lambda: time.time() > settle, 5, "3 s more", 0.2)
    stop(two_workers, killed=leader)
    finish(cwd, worker_env, stats)

    # Then RabbitMQ received the one-off once and the capped entry's 6 ticks (duplicates
    # only as at-least-once ones, under the same message_id)
    messages = take(amqp_url, "text")
    assert ids_of(messages, "once") == [
        f"once@{round(datetime.fromisoformat(at).timestamp() * 1000)}"
    ]
    assert len(ids_of(messages, "capped")) == 6
    assert gaps(ids_of(messages, "capped")) == [STEP] * 5
    assert stats.snapshot().totals.invariant_holds


def test_apply_the_python_api_a_zoned_cron_jitter_and_backfill_on_the_real_worker(  # noqa: PLR0915
    worker: Worker,
    worker_dir: Path,
    worker_env: dict[str, str],
    stats: Stats,
    settings: Settings,
    amqp_url: str,
) -> None:
    # Given the real worker, and a file of two entries: one every 0.5 s, and a crontab
    # every minute of the hour of Kathmandu's day (UTC+05:45) the next minute falls in
    write_config(worker_dir, stats.keys.prefix, CONFIG)
    zone = ZoneInfo("Asia/Kathmandu")
    next_minute = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    hour = next_minute.astimezone(zone).hour
    document = {
        "format": 1,
        "entries": {
            "ev": {"schedule": {"every": STEP}, "kwargs": {"routing_key": "example.ev"}},
            "kt": {
                "schedule": {"cron": f"* {hour} * * *"},
                "timezone": "Asia/Kathmandu",
                "kwargs": {"routing_key": "example.kt"},
            },
        },
    }
    (worker_dir / "entries.json").write_text(json.dumps(document))
    worker.start()
    applying = time.time()
    first = ok(pubtasks(worker_dir, worker_env, "schedule", "apply", "entries.json"))
    ev_added = Catalog(stats).get("ev").added_at  # type: ignore[union-attr]
    # ... and an entry made in code, with the Python API, jittered by up to 0.4 s
    app = App("test_schedules", set_as_current=False, broker="memory://")
    app.use_settings(settings)
    api = Schedules(app, stats)
    api.add("api", recipe(every=1.0, jitter=0.4, routing_key="example.api"))
    wait_for(lambda: acked(stats, "ev") >= 4 and acked(stats, "api") >= 3, 30, "ev and api")
    wait_for(lambda: acked(stats, "kt") >= 1, 100, "the crontab's first tick")
    # When a second file changes ev's routing key and leaves api out (removed)
    document["entries"]["ev"]["kwargs"] = {"routing_key": "example.ev2"}  # type: ignore[index]
    (worker_dir / "entries.json").write_text(json.dumps(document))
    dry = ok(pubtasks(worker_dir, worker_env, "schedule", "apply", "entries.json", "--dry-run"))
    changing = time.time()
    second = ok(pubtasks(worker_dir, worker_env, "schedule", "apply", "entries.json"))
    changed = time.time()
    then = acked(stats, "ev")
    wait_for(lambda: acked(stats, "ev") >= then + 4, 30, "ev ticking on")
    # ... and ev is backfilled from 5 s before it existed to its second tick: the points
    # before it existed are fired now, the two it had confirmed publish nothing again
    grid = every(STEP)
    firsts = sorted(scheduled_at_of(m) for m in _acked_ids(stats, "ev"))[:2]
    start = grid.following(applying - 5.0 - STEP)
    backfill = pubtasks(
        worker_dir, worker_env, "schedule", "backfill", "ev",
        "--from", datetime.fromtimestamp(start, UTC).isoformat(),
        "--to", datetime.fromtimestamp(firsts[1], UTC).isoformat(),
    )  # fmt: skip
    too_many = pubtasks(
        worker_dir, worker_env, "schedule", "backfill", "ev", "--max", "3",
        "--from", datetime.fromtimestamp(start, UTC).isoformat(),
        "--to", datetime.fromtimestamp(firsts[1], UTC).isoformat(),
    )  # fmt: skip
    wait_for(lambda: not stats.ledger.overdue(time.time()), 30, "the backfill published")
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)

    messages = take(amqp_url, "text")
    key_of = {m.properties["message_id"]: m.routing_key for m in messages}
    # Then the first apply added both, the second changed one and removed one
    assert "+ ev  added" in first and "+ kt  added" in first
    assert "~ ev  changed" in dry and "- api  removed" in dry and "dry run" in dry
    assert "~ ev  changed" in second and "- api  removed" in second
    # ev's routing key changed from the tick after the apply (the ticks backfilled from
    # before ev existed were fired after it, with the recipe of then)
    ev = ids_of(messages, "ev")
    assert all(key_of[i] == "example.ev" for i in ev if ev_added < scheduled_at_of(i) < changing)
    assert all(key_of[i] == "example.ev2" for i in ev if scheduled_at_of(i) < ev_added)
    assert all(key_of[i] == "example.ev2" for i in ev if scheduled_at_of(i) > changed + STEP)
    # the backfill fired each point before ev existed once, and nothing of those confirmed:
    # ev's ticks are its whole grid from `start`, each once
    assert backfill.returncode == 0, backfill.stderr
    assert [m.properties["message_id"] for m in messages].count(ev[0]) == 1
    assert ev[0] == f"ev@{round(start * 1000)}"
    assert gaps(ev) == [STEP] * (len(ev) - 1)
    assert len([m for m in messages if m.properties["message_id"] in set(ev)]) == len(ev)
    assert too_many.returncode == 2 and "more than 3 ticks" in too_many.stderr
    # the crontab fired on a whole minute of that hour of Kathmandu's day
    [kt] = ids_of(messages, "kt")
    at = datetime.fromtimestamp(scheduled_at_of(kt), UTC)
    assert (at.second, at.microsecond) == (0, 0) and at.astimezone(zone).hour == hour
    # the API's entry: jittered ticks, each within 0.4 s after its whole second, stamped
    # with its jittered time (the default body's scheduled_at, as x-scheduled-at is for an
    # entry's own body), and none after it was removed
    api_ids = ids_of(messages, "api")
    assert len(api_ids) >= 3
    for i in api_ids:
        t = scheduled_at_of(i)
        assert 0 <= t - int(t) < 0.4
    for m in messages:
        mid = m.properties["message_id"]
        if mid in api_ids:
            stamped = float(json.loads(m.body)["scheduled_at"])  # the default body's
            assert abs(stamped - scheduled_at_of(mid)) < 1e-3, mid
    assert scheduled_at_of(api_ids[-1]) <= changed + 1.0
    snap = stats.snapshot()
    assert snap.totals.invariant_holds
    assert snap.totals.acked == len({m.properties["message_id"] for m in messages})


def _acked_ids(stats: Stats, entry: str) -> list[str]:
    """The message ids of the entry's ticks in its history (acked), oldest first."""
    runs = stats.history(entry, 100)
    return [r["message_id"] for r in reversed(runs) if r["outcome"] == "acked"]
