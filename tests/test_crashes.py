"""Crashes that used to leave nobody in charge: a dead embedded beat, a worker killed
whole with ticks reserved, and a tick redelivered after it was confirmed.

Each scenario drives the real ``celery -A pubtasks worker -B``; the test plays the
supervisor (compose's ``restart:``, systemd) and starts a worker again when it exits.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time

import pytest
from celery import Celery

from pubtasks.bench.waiting import wait_for
from pubtasks.defaults import DEFAULT_ENTRY
from pubtasks.schedule import every
from pubtasks.stats import Stats
from pubtasks.supervision import EXIT_BEAT_DIED
from tests.helpers import (
    Worker,
    beat_pid,
    caught_up,
    check,
    clock_of,
    finish,
    holder_group,
    row_of,
    take,
    tally,
    write_config,
)
from tests.support.ledger import Expected, account
from tests.support.proxy import Proxy
from tests.test_faults import INTERVAL, more_acks, start_behind

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]


def exit_code(worker: Worker, timeout: float) -> tuple[int, float]:
    """Wait for the worker to exit by itself; its exit status, and when it was seen."""
    assert worker.proc is not None
    proc = worker.proc
    wait_for(lambda: proc.poll() is not None, timeout, "the worker to exit", 0.05)
    return int(proc.returncode), time.time()


def fired(stats: Stats) -> int:
    return stats.snapshot().last_message_number


def ticking_again(stats: Stats, before: int, n: int = 5) -> float:
    """Wait until ticks numbered after ``before`` (fired by a beat started since) are
    confirmed, ``n`` of them; return when the first was seen."""

    def confirmed(k: int) -> bool:
        return (stats.snapshot().totals.last_confirmed_number or 0) > before + k

    first = wait_for(lambda: confirmed(0) and time.time(), 60, "a tick fired since", 0.01)
    wait_for(lambda: confirmed(n - 1), 60, f"{n} ticks fired since", 0.05)
    return float(first)


def test_a_killed_beat_stops_its_worker_and_a_restart_goes_on(
    worker: Worker, stats: Stats, amqp_url: str
) -> None:
    # Given one worker with embedded beat, publishing every 0.2 s
    worker.start()
    more_acks(stats, 3, 30, "start")
    # When its beat process is killed (SIGKILL, as the OOM killer would)
    pid = beat_pid(worker)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    before = fired(stats)
    # Then the worker sees it within a few seconds and stops with exit status 3...
    code, exited_at = exit_code(worker, 30)
    assert code == EXIT_BEAT_DIED
    assert f"the embedded beat (pid {pid}) died (killed by signal 9)" in worker.log
    # ... and once its supervisor starts it again, ticks go on from where they stopped
    # (the new beat takes the lock the dead one left, once it expires, and fires the
    # ticks missed meanwhile): recovery is the first confirm of a tick fired after the kill
    worker.start()
    recovery = ticking_again(stats, before) - killed_at
    wait_for(lambda: caught_up(stats), 60, "the new beat to catch up", 0.05)
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(
        "beat process killed (SIGKILL), one worker: it exits 3 and is restarted",
        amqp_url, stats, clock_of(worker), recovery,
        f"the worker exited 3 {exited_at - killed_at:.1f} s after the kill", queued,
        interval=INTERVAL,
    )  # fmt: skip
    check(row)


def test_with_two_workers_a_killed_beat_is_replaced_and_its_worker_restarted(
    two_workers: list[Worker], stats: Stats, amqp_url: str
) -> None:
    # Given two workers with embedded beat; one beat holds the beat lock
    for w in two_workers:
        w.start()
    more_acks(stats, 10, 30, "start")
    leader = wait_for(lambda: holder_group(stats), 10, "a beat lock holder")
    [holder] = [w for w in two_workers if w.proc is not None and w.proc.pid == leader]
    [other] = [w for w in two_workers if w is not holder]
    assert other.proc is not None
    # When the holder's beat process is killed
    os.kill(beat_pid(holder), signal.SIGKILL)
    killed_at = time.time()
    # Then the other beat takes the lock, as it would from any dead holder...
    survivor = other.proc.pid
    wait_for(lambda: holder_group(stats) == survivor, 20, "the other beat to take over", 0.1)
    took_over = time.time() - killed_at
    # ... and the worker whose beat died is noticed: it exits 3, and is started again
    code, exited_at = exit_code(holder, 30)
    assert code == EXIT_BEAT_DIED
    holder.start()
    holder.wait_ready(30)
    more_acks(stats, 10, 30, "after the restart")
    for w in two_workers:
        assert w.stop() == 0
    queued = finish(other.cwd, other.env, stats)
    row = tally(
        "beat process killed (SIGKILL), two workers: the other beat takes over",
        amqp_url, stats, clock_of(*two_workers), took_over,
        f"its worker exited 3 {exited_at - killed_at:.1f} s after the kill, and was restarted",
        queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)


def reserved_ticks(stats: Stats) -> set[str]:
    """The ids of the ticks in Celery's ``unacked`` hash (reserved by a worker)."""
    ids = set()
    for raw in stats.client.hvals(f"{stats.keys.prefix}unacked"):
        message = json.loads(raw)[0]
        kwargs = json.loads(base64.b64decode(message["body"]))[1]
        ids.add(f"{kwargs['entry']}@{round(kwargs['scheduled_at'] * 1000)}")
    return ids


def held(stats: Stats, n: int) -> set[str] | None:
    ids = reserved_ticks(stats)
    return ids if len(ids) >= n else None


def test_a_killed_worker_s_reserved_ticks_are_given_back_in_seconds(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str, prefix: str, proxy: Proxy
) -> None:
    # Given a worker whose publishes hang (RabbitMQ cut off), so that it holds ticks
    write_config(worker.cwd, prefix, "CONFIRM_TIMEOUT = 5.0\n")
    start_behind(proxy, worker, stats, vhost)
    proxy.cut()
    reserved: set[str] = wait_for(lambda: held(stats, 2), 20, "2 reserved ticks", 0.05)
    # When the whole worker is killed (SIGKILL: OOM, a lost host), and started again
    assert worker.proc is not None
    before = fired(stats)
    os.killpg(worker.proc.pid, signal.SIGKILL)
    killed_at = time.time()
    worker.proc.wait(10)
    proxy.restore()
    worker.start()
    # Then each tick it held is published within seconds (not after the visibility
    # timeout of an hour): each is marked done once RabbitMQ has confirmed it
    wait_for(lambda: all(stats.done(t, 1) for t in reserved), 60, "the reserved ticks", 0.1)
    given_back = time.time() - killed_at
    assert "gave back" in worker.log
    # ... and the restarted beat goes on, with the ticks missed while none was alive
    ticking_again(stats, before)
    wait_for(lambda: caught_up(stats), 60, "the new beat to catch up", 0.05)
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(
        "whole worker killed (SIGKILL) holding ticks, restarted",
        amqp_url, stats, clock_of(worker), given_back,
        f"{len(reserved)} reserved ticks published {given_back:.1f} s after the kill "
        "(recovery time)", queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)


def test_a_redelivered_tick_that_was_confirmed_changes_no_counter(
    worker: Worker, stats: Stats, amqp_url: str, redis_url: str, prefix: str
) -> None:
    # Given ticks published and confirmed, and the worker stopped
    worker.start()
    more_acks(stats, 5, 30, "start")
    assert worker.stop() == 0
    clock = clock_of(worker)
    queued = finish(worker.cwd, worker.env, stats)
    received = take(amqp_url, "text")
    before = stats.snapshot()
    # When Celery delivers one of them again (its worker died after the confirm, before
    # the ack), and a worker takes it
    first = received[0]
    body = json.loads(first.body)
    app = Celery("redeliver", broker=redis_url, set_as_current=False)
    kwargs = {
        "entry": body["entry"],
        "scheduled_at": body["scheduled_at"],
        "number": body["message_number"],
        "batch": 1,
    }
    app.send_task("pubtasks.publish", kwargs=kwargs, queue=f"{prefix}celery")
    app.close()
    assert finish(worker.cwd, worker.env, stats) == 1
    # Then nothing is published and no counter moves
    after = stats.snapshot()
    assert (after.totals, after.entries) == (before.totals, before.entries)
    assert take(amqp_url, "text") == []
    log = (worker.cwd / "finish" / "worker.log").read_text()
    assert f"tick {first.properties['message_id']} was confirmed or failed before" in log
    row = row_of(
        "a confirmed tick delivered again (its worker died before Celery's ack)",
        account(received, stats, [Expected(DEFAULT_ENTRY, every(INTERVAL))], clock), stats,
        None, "acked without publishing: no message, no counter changed", queued,
    )  # fmt: skip
    check(row)


def tick_of(raw: str) -> str:
    """The tick id of a Celery task message as the Redis transport stores it."""
    kwargs = json.loads(base64.b64decode(json.loads(raw)["body"]))[1]
    return f"{kwargs['entry']}@{round(kwargs['scheduled_at'] * 1000)}"


def test_a_tick_whose_task_message_was_lost_in_redis_is_sent_again(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str, prefix: str, proxy: Proxy
) -> None:
    # Given a worker whose publishes hang (RabbitMQ cut off), so that ticks queue in Redis
    write_config(worker.cwd, prefix, "CONFIRM_TIMEOUT = 5.0\n")
    start_behind(proxy, worker, stats, vhost)
    proxy.cut()
    # When a queued task message vanishes (as one popped by a worker killed before it
    # recorded it as reserved does)
    raw = wait_for(lambda: stats.client.rpop(f"{prefix}celery"), 20, "a queued tick", 0.05)
    lost_at = time.time()
    lost = tick_of(raw)
    proxy.restore()
    # Then, RESEND_AFTER later, a worker sends that tick again, and it is published
    wait_for(lambda: stats.done(lost, 1), 120, "the lost tick to be sent again", 0.2)
    recovered = time.time() - lost_at
    assert f"sent tick {lost} " in worker.log
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(
        "a tick's task message lost in Redis (popped, never reserved)",
        amqp_url, stats, clock_of(worker), recovered,
        f"sent again by the supervisor {recovered:.1f} s after the loss", queued,
        interval=INTERVAL,
    )  # fmt: skip
    check(row)
