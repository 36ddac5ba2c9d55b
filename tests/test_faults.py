"""The fault suite: nothing is lost, the counters stay exact, whatever breaks.

Each scenario drives the real ``celery -A pubtasks worker -B`` at a short
interval, breaks something, then consumes the queue and reads Redis. Run it
alone with ``scripts/test -m faults``; ``scripts/reliability`` runs it and
writes the table in docs/reliability.md from what it records.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from pubtasks.bench.waiting import wait_for
from pubtasks.bench.worker import rss_of_group as process_group_rss
from pubtasks.stats import Stats
from tests.helpers import (
    Worker,
    caught_up,
    check,
    clock_of,
    close_connections,
    finish,
    tally,
    write_config,
)
from tests.support.nodes import RabbitNode, RedisNode, accepting
from tests.support.proxy import Proxy

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

INTERVAL = 0.2
NACK_INTERVAL = 0.5
NACK_BATCH = 10


def acked(stats: Stats) -> int:
    return stats.snapshot().totals.acked


def more_acks(stats: Stats, n: int, timeout: float, what: str) -> float:
    """Wait until ``n`` more publishes are acked; return when the first of them was seen."""
    start = acked(stats)
    first = wait_for(
        lambda: acked(stats) > start and time.time(), timeout, f"an ack ({what})", 0.01
    )
    wait_for(lambda: acked(stats) >= start + n, timeout, f"{n} acks ({what})")
    return float(first)


def fired(stats: Stats) -> int:
    return stats.snapshot().last_message_number


def configure(worker: Worker, prefix: str, extra: str) -> None:
    write_config(worker.cwd, prefix, extra)


def start_behind(proxy: Proxy, worker: Worker, stats: Stats, vhost: str) -> None:
    """Start the worker reaching RabbitMQ through ``proxy``; return once it publishes."""
    worker.env["AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
    worker.start()
    more_acks(stats, 3, 30, "start")


def test_repeated_forced_closes(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str, redis_url: str, prefix: str
) -> None:
    # Given a worker publishing every 0.2 s
    worker.start()
    more_acks(stats, 3, 30, "start")
    # When RabbitMQ closes its connections five times
    recoveries = []
    for round_ in range(5):
        assert close_connections(vhost) >= 1
        closed_at = time.time()
        recoveries.append(more_acks(stats, 3, 30, f"close {round_}") - closed_at)
    assert worker.stop() == 0
    # Then every tick arrives (a tick cut mid-publish may arrive twice, same id)
    queued = finish(worker.cwd, worker.env, stats)
    recovery = max(recoveries)
    row = tally(
        "repeated forced closes (5)", amqp_url, stats, clock_of(worker), recovery, "", queued,
        interval=INTERVAL,
    )  # fmt: skip
    check(row)


@pytest.fixture(scope="module")
def own_rabbit() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own, to stop and to alarm: the shared one on
    5672 serves the tests that run beside these (``scripts/test`` runs in parallel)."""
    root = Path(tempfile.mkdtemp(prefix="pubtasks-faults-"))
    os.chmod(root, 0o755)  # the node runs as the rabbitmq user
    node = RabbitNode(root / "rabbit", f"pubtasks-faults-{os.getpid()}")
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_url(own_rabbit: RabbitNode) -> Iterator[str]:
    """A fresh vhost on ``own_rabbit``, deleted afterwards (the node may be stopped)."""
    name = f"pubtasks-test-{uuid.uuid4().hex[:10]}"
    own_rabbit.ctl("add_vhost", name)
    try:
        own_rabbit.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield own_rabbit.url(name)
    finally:
        own_rabbit.ctl("start_app")  # a no-op when it runs
        own_rabbit.ctl("delete_vhost", name)


@pytest.fixture
def broker_app(own_rabbit: RabbitNode) -> Iterator[dict[str, Callable[[], float]]]:
    """Stop and start ``own_rabbit``'s app; it is always started again afterwards.

    ``start`` returns when RabbitMQ first accepted a TCP connection again.
    """
    state = {"stopped": False}

    def stop() -> float:
        state["stopped"] = True
        own_rabbit.ctl("stop_app")
        return time.time()

    def start() -> float:
        up: list[float] = []

        def watch() -> None:  # note the first moment the listener accepts again
            up.append(
                wait_for(lambda: accepting(own_rabbit.port) and time.time(), 60, "RabbitMQ", 0.005)
            )

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        own_rabbit.ctl("start_app")
        own_rabbit.ctl("await_startup")
        state["stopped"] = False
        watcher.join(30)
        return up[0]

    try:
        yield {"stop": stop, "start": start}
    finally:
        if state["stopped"]:
            own_rabbit.ctl("start_app")


def test_broker_outage(
    worker: Worker, stats: Stats, own_url: str, broker_app: dict[str, Callable[[], float]]
) -> None:
    worker.env["AMQP_URL"] = own_url
    worker.start()
    more_acks(stats, 3, 30, "start")
    # When RabbitMQ's app is stopped for about 10 s (50 ticks fire meanwhile)
    broker_app["stop"]()
    during = fired(stats)
    wait_for(lambda: fired(stats) >= during + 50, 30, "50 ticks during the outage", 0.1)
    acked_before = acked(stats)
    up_at = broker_app["start"]()
    # Then publishing resumes (the time to the first confirm is a recorded figure, not a
    # timed assertion: the deadline below only bounds the wait)
    seen = wait_for(
        lambda: acked(stats) > acked_before and time.time(), 60, "a confirm after the outage", 0.01
    )
    recovery = seen - up_at
    last = fired(stats)
    wait_for(lambda: acked(stats) >= last, 60, "the backlog to be published")
    assert worker.stop() == 0
    # ... and the ticks that fell in the outage are published after it, each at its time
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(
        "broker outage (~10 s, stop_app)", own_url, stats, clock_of(worker), recovery, "",
        queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)


def test_silent_network_cut(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str, prefix: str, proxy: Proxy
) -> None:
    # Given a worker that reaches RabbitMQ through a proxy the test controls
    configure(worker, prefix, "CONFIRM_TIMEOUT = 1.0\n")
    start_behind(proxy, worker, stats, vhost)
    # When every packet is dropped, with no FIN or RST, for about 4 s (20 ticks)
    proxy.cut()
    during = fired(stats)
    wait_for(lambda: fired(stats) >= during + 20, 30, "20 ticks during the cut", 0.1)
    # Then the publish in flight ends unconfirmed after CONFIRM_TIMEOUT...
    wait_for(lambda: stats.snapshot().totals.unconfirmed >= 1, 10, "an unconfirmed publish")
    proxy.restore()
    restored_at = time.time()
    # ... and publishing resumes once the cut ends
    recovery = more_acks(stats, 20, 60, "after the cut") - restored_at
    last = fired(stats)
    wait_for(lambda: acked(stats) >= last, 30, "the backlog to be published")
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(
        "silent network cut (~4 s)", amqp_url, stats, clock_of(worker), recovery, "", queued,
        interval=INTERVAL,
    )  # fmt: skip
    check(row)
    assert row.unconfirmed >= 1


@pytest.fixture
def memory_alarm(own_rabbit: RabbitNode) -> Iterator[dict[str, Callable[[], None]]]:
    """Raise and clear a memory alarm on ``own_rabbit`` (it blocks every publishing
    connection); its memory watermark is always put back afterwards."""
    ctl = own_rabbit.ctl
    shown = ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    try:
        before = str(float(shown))
    except ValueError:  # an absolute limit, or something unexpected: RabbitMQ's default
        before = "0.4"

    def on() -> None:
        ctl("set_vm_memory_high_watermark", "0")

    def off() -> None:
        ctl("set_vm_memory_high_watermark", before)

    try:
        yield {"on": on, "off": off}
    finally:
        off()


@pytest.mark.parametrize("batch_writes", [True, False], ids=["batched", "basic_publish"])
def test_memory_alarm(
    worker: Worker,
    stats: Stats,
    own_url: str,
    prefix: str,
    memory_alarm: dict[str, Callable[[], None]],
    batch_writes: bool,
) -> None:
    # Given a worker publishing every 0.2 s, waiting at most 2 s for a confirm, with
    # batched writes or through py-amqp's basic_publish
    configure(worker, prefix, f"BATCH_WRITES = {batch_writes}\n")
    worker.env["AMQP_URL"] = own_url
    worker.start()
    more_acks(stats, 3, 30, "start")
    # When RabbitMQ raises a memory alarm (it blocks publishers) for 20 ticks (~4 s)
    memory_alarm["on"]()
    during = fired(stats)
    wait_for(lambda: fired(stats) >= during + 20, 30, "20 ticks during the alarm", 0.1)
    memory_alarm["off"]()
    cleared_at = time.time()
    # Then publishing resumes once the alarm clears...
    recovery = more_acks(stats, 5, 60, "after the alarm") - cleared_at
    last = fired(stats)
    wait_for(lambda: acked(stats) >= last, 60, "the backlog to be published")
    assert worker.stop() == 0
    # ... every tick is delivered (a publish cut off while blocked may arrive twice, with
    # the same message_id), and the log says why the publishes went unconfirmed
    way = "batched writes" if batch_writes else "basic_publish"
    scenario = f"memory alarm (~4 s, publishers blocked), {way}"
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(scenario, own_url, stats, clock_of(worker), recovery, "", queued, interval=INTERVAL)
    check(row)
    assert row.unconfirmed >= 1
    assert "blocked publishing: connection blocked" in worker.log


def test_nacks(worker: Worker, stats: Stats, amqp_url: str, prefix: str) -> None:
    # Given ticks of 10 messages, 5 awaiting their confirm at once, and a second queue
    # on the same key that takes 15 messages and nacks the rest (reject-publish)
    configure(
        worker, prefix, f"PUBLISH_BATCH = {NACK_BATCH}\nCONFIRM_WINDOW = 5\nPUBLISH_ATTEMPTS = 3\n"
    )
    worker.env["PUBLISH_INTERVAL"] = str(NACK_INTERVAL)
    full = Queue(
        "full",
        Exchange("message", "topic", durable=True),
        "example.text",
        queue_arguments={"x-max-length": 15, "x-overflow": "reject-publish"},
    )
    with Connection(amqp_url) as conn:
        full(conn.default_channel).declare()
        worker.start()
        # When the test empties that queue now and then, for 20 ticks
        taken = 0
        start = fired(stats)
        while fired(stats) < start + 200:
            wait_for(lambda: stats.snapshot().totals.nacked > 0, 30, "nacks", 0.1)
            taken += full(conn.default_channel).purge() or 0
            now_fired = fired(stats)
            wait_for(lambda n=now_fired: fired(stats) >= n + 30, 30, "3 more ticks", 0.1)
        assert worker.stop() == 0, worker.log[-5000:]
        queued = finish(worker.cwd, worker.env, stats)
        taken += full(conn.default_channel).purge() or 0
    # Then RabbitMQ's count of messages the rejecting queue took equals acked, and
    # every publish landed in `text`: nacked = published - acked, exactly
    t = stats.snapshot().totals
    assert taken == t.acked
    scenario = "nacks (reject-publish queue, batches of 10)"
    # Each message of each due tick ended acked, or failed after at most 3 attempts with
    # its reason (nacked, and nothing else)
    row = tally(
        scenario, amqp_url, stats, clock_of(worker), None, "", queued,
        interval=NACK_INTERVAL, batch=NACK_BATCH, failing=("nacked by RabbitMQ",),
    )  # fmt: skip
    check(row)
    assert row.received == t.published
    assert t.nacked == t.published - t.acked - t.unconfirmed
    assert t.nacked > 0
    assert t.published <= 3 * row.numbers


LATE_KEY = """
beat_schedule = {
    "publish-text": {
        "task": "pubtasks.publish", "schedule": every(), "kwargs": {"routing_key": "bound.later"},
    },
}
"""


def test_unroutable_messages(worker: Worker, stats: Stats, amqp_url: str, prefix: str) -> None:
    # Given an entry whose routing key no queue is bound with yet (pubtasks declares only
    # the queue's own binding, so nothing binds it back behind the test's back)
    write_config(worker.cwd, prefix, LATE_KEY)
    worker.start()
    wait_for(lambda: stats.snapshot().totals.returned >= 10, 30, "10 returned publishes")
    # When a queue is bound with it
    with Connection(amqp_url) as conn:
        conn.default_channel.queue_bind("text", "message", "bound.later")
    rebound_at = time.time()

    def delivered() -> int:
        t = stats.snapshot().totals
        return t.acked - t.returned

    first = wait_for(lambda: delivered() > 0 and time.time(), 30, "a delivery", 0.01)
    wait_for(lambda: delivered() >= 10, 30, "10 deliveries after binding")
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    # Then the returned messages were published again (on_return="retry", the default)
    # until the binding was there: each publish is counted, and every tick is delivered
    # (none failed: TICK_DEADLINE is far off)
    row = tally(
        "unroutable (no binding yet), on_return='retry'", amqp_url, stats, clock_of(worker),
        float(first) - rebound_at, "", queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)
    t = stats.snapshot().totals
    assert t.returned >= 10
    assert row.delivered == row.due == t.acked - t.returned == row.numbers
    assert "NO_ROUTE" in stats.snapshot().last_error["reason"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisNode]:
    server = RedisNode(tmp_path / "redis-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restart(worker: Worker, amqp_url: str, prefix: str, own_redis: RedisNode) -> None:
    # Given a worker whose Redis (transport and statistics) persists to an AOF
    worker.env["REDIS_URL"] = own_redis.url
    stats = Stats.from_url(own_redis.url, prefix)
    worker.start()
    more_acks(stats, 5, 30, "start")
    # When Redis goes down (clean shutdown, AOF written) until beat has failed to send
    # 5 ticks, then comes back
    own_redis.stop()
    down_at = time.time()
    wait_for(lambda: worker.log.count("beat: cannot send the tick") >= 5, 30, "5 unsent ticks")
    own_redis.start()
    up_at = time.time()
    # Then the worker reconnects and ticks flow again
    recovery = more_acks(stats, 10, 60, "after the restart") - up_at
    last = fired(stats)
    wait_for(lambda: acked(stats) >= last, 30, "every fired tick to be published")
    wait_for(lambda: caught_up(stats), 60, "beat to send the ticks it kept", 0.05)
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    # ... with no tick lost (beat kept the ticks it could not send) and exact counts
    scenario = f"Redis restart (down {up_at - down_at:.1f} s, AOF)"
    row = tally(
        scenario, amqp_url, stats, clock_of(worker), recovery, "", queued, interval=INTERVAL
    )
    acked_total = stats.snapshot().totals.acked
    stats.close()
    check(row)
    assert row.received == acked_total


def test_killed_worker_process(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str, prefix: str, proxy: Proxy
) -> None:
    # Given a worker behind a proxy, with a publish held in flight by a cut
    configure(worker, prefix, "CONFIRM_TIMEOUT = 2.0\n")
    start_behind(proxy, worker, stats, vhost)
    proxy.cut()
    pending = wait_for(
        lambda: stats.client.zrange(stats.keys.pending, 0, 0), 10, "a publish in flight", 0.01
    )
    # When the pool process doing that publish is killed with SIGKILL
    message_id, publisher = pending[0].split("#")
    pid = int(publisher.split(".")[-3])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    proxy.restore()
    # Then the tick is delivered again (late ack + reject on worker lost), same id
    recovery = more_acks(stats, 5, 60, "after the kill") - killed_at
    # ... and the orphaned publish is counted as unconfirmed by a later task
    wait_for(lambda: stats.snapshot().totals.pending == 0, 60, "the orphan to be reaped", 0.2)
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    scenario = "killed worker process (SIGKILL mid-publish)"
    row = tally(
        scenario, amqp_url, stats, clock_of(worker), recovery, "", queued, interval=INTERVAL
    )
    check(row)
    assert row.ids is not None and message_id in row.ids
    assert f"pid:{pid} exited with 'signal 9 (SIGKILL)'" in worker.log


def test_conflicting_exchange_at_run_time(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str
) -> None:
    worker.start()
    more_acks(stats, 3, 30, "start")
    # When the exchange is replaced by a direct one and the publisher reconnects
    with Connection(amqp_url) as conn:
        conn.default_channel.exchange_delete("message")
        Exchange("message", "direct", durable=True)(conn.default_channel).declare()
    close_connections(vhost)
    # Then each tick fails once, with the line naming the exchange; no retry loop
    wait_for(lambda: stats.snapshot().totals.failed >= 5, 30, "5 failed ticks")
    assert worker.stop() == 0
    reason = stats.snapshot().last_error["reason"]
    assert "cannot declare exchange 'message' (topic, durable)" in reason
    assert "(406) PRECONDITION_FAILED" in reason
    assert "Traceback" not in worker.log
    declares = worker.log.count("PRECONDITION_FAILED")
    # The next start would refuse the conflict too: the operator removes the stray
    # exchange first, then the queued ticks go out
    with Connection(amqp_url) as conn:
        conn.default_channel.exchange_delete("message")
    queued = finish(worker.cwd, worker.env, stats)
    # Every due tick was delivered, or failed with that line and no other reason
    row = tally(
        "topology conflict (406) at run time", amqp_url, stats, clock_of(worker), None, "",
        queued, interval=INTERVAL,
        failing=("cannot declare exchange 'message' (topic, durable): RabbitMQ replied (406)",),
    )  # fmt: skip
    check(row)
    assert row.failed >= 5
    assert declares <= 3 * row.failed  # a line or two per failed tick, not a loop


def test_load(worker: Worker, stats: Stats, amqp_url: str, prefix: str) -> None:
    seconds = float(os.environ.get("PUBTASKS_LOAD_SECONDS", "120"))
    interval = 0.05
    # Given two worker processes and beat firing every 50 ms
    worker.env["PUBLISH_INTERVAL"] = str(interval)
    worker.start()
    more_acks(stats, 20, 30, "start")
    assert worker.proc is not None
    # When it runs for `seconds` (counted in ticks), after 15 s of warm-up
    begin = fired(stats)
    wait_for(lambda: fired(stats) >= begin + 15 / interval, 30, "warm-up ticks", 0.5)
    rss_start = process_group_rss(worker.proc.pid)
    wait_for(lambda: fired(stats) >= begin + seconds / interval, seconds * 2, "the load run", 1.0)
    rss_end = process_group_rss(worker.proc.pid)
    last = fired(stats)
    wait_for(lambda: acked(stats) >= last, 30, "the last ticks to be confirmed")
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    # Then no tick is lost or duplicated, the counters are exact, memory stays flat
    row = tally(
        f"load: {interval} s for {seconds:g} s, 2 processes", amqp_url, stats,
        clock_of(worker), None,
        notes=f"RSS of the worker's processes {rss_start / 2**20:.0f} MiB after warm-up, "
        f"{rss_end / 2**20:.0f} MiB at the end", queued=queued, interval=interval,
    )  # fmt: skip
    check(row)
    assert row.duplicates == 0
    assert rss_end <= rss_start * 1.1 + 8 * 2**20, (rss_start, rss_end)
