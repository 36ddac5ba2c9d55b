"""Integration tests: the publisher (confirm stream, tick policy, accounting) against the
real RabbitMQ and Redis."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from pubtasks.bench.waiting import wait_for
from pubtasks.errors import TickFailed, TopologyError
from pubtasks.framing import Frames
from pubtasks.message import Recipe, Tick
from pubtasks.policy import Result
from pubtasks.publisher import Publisher
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from pubtasks.tries import Later
from tests.helpers import close_connections, drain
from tests.support.proxy import Proxy

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(settings: Settings, stats: Stats) -> Iterator[Publisher]:
    p = Publisher(settings, stats)
    yield p
    p.close()


def tick(stats: Stats, routing_key: str = "example.text", on_return: str = "retry") -> Tick:
    """Tick n, scheduled a minute ago: due, and well within TICK_DEADLINE however long the
    suite has run.

    It is at floor(now) - 60 + n/100, so each tick has its own id (a second tick with the
    same id would be the same tick, done already), and even the ten thousandth tick of a test
    is in the past, so that a message's published_at is never before its scheduled_at.
    """
    recipe = Recipe(routing_key=routing_key, on_return=on_return)
    n = stats.next_number()
    return Tick("publish-text", math.floor(time.time()) - 60 + n / 100, n, recipe=recipe)


def through(p: Publisher, t: Tick) -> Result:
    """Publish ``t`` as the task does, each time it is given back (``Later``) at once:
    the task would have it wait out ``Later.delay`` outside the process."""
    tries = None
    while True:
        try:
            return p.publish_tick(t, tries)
        except Later as later:
            tries = later.tries


@pytest.mark.parametrize("batch_writes", [True, False], ids=["batched", "basic_publish"])
def test_a_tick_is_published_persistent_confirmed_and_counted(
    settings: Settings, stats: Stats, amqp_url: str, batch_writes: bool
) -> None:
    t = tick(stats)
    p = Publisher(replace(settings, batch_writes=batch_writes), stats)
    try:
        result = p.publish_tick(t)
    finally:
        p.close()
    assert (result.outcome, result.attempts, result.message_number) == ("acked", 1, 1)
    [got] = drain(amqp_url, "text")
    assert got.body["message_number"] == 1
    assert got.body["scheduled_at"] == t.scheduled_at
    assert got.body["published_at"] >= t.scheduled_at
    assert got.properties["message_id"] == t.message_id
    assert got.properties["app_id"] == "pubtasks"
    assert got.properties["content_type"] == "application/json"
    assert got.properties["delivery_mode"] == 2
    assert t.scheduled_at - 1 <= got.properties["timestamp"] <= time.time()
    # Nothing else: kombu's filler properties (an empty headers table, priority 0) are not sent
    assert set(got.properties) == {
        "message_id",
        "app_id",
        "content_type",
        "delivery_mode",
        "timestamp",
    }
    snap = stats.snapshot()
    assert (snap.totals.published, snap.totals.acked, snap.totals.pending) == (1, 1, 0)
    assert snap.totals.last_confirmed_number == 1


def test_the_connection_is_reused_across_ticks(publisher: Publisher, stats: Stats) -> None:
    publisher.publish_tick(tick(stats))
    first = publisher.stream.connection.connection
    publisher.publish_tick(tick(stats))
    assert publisher.stream.connection.connection is first


def test_an_unroutable_message_with_on_return_count_counts_as_returned_not_delivered(
    publisher: Publisher, stats: Stats, amqp_url: str
) -> None:
    result = publisher.publish_tick(tick(stats, "nobody.listens", on_return="count"))
    assert result.outcome == "returned"
    assert drain(amqp_url, "text") == []
    snap = stats.snapshot()
    assert (snap.totals.published, snap.totals.acked, snap.totals.returned) == (1, 1, 1)
    assert snap.totals.last_confirmed_number is None
    assert "NO_ROUTE" in snap.last_error["reason"]
    assert "nobody.listens" in snap.last_error["reason"]


def test_nacks_are_counted_and_the_tick_fails_after_bounded_attempts(
    settings: Settings, stats: Stats, amqp_url: str
) -> None:
    # Given a second queue bound to the same key that rejects every publish
    with Connection(amqp_url) as conn:
        full = Queue(
            "full",
            Exchange("message", "topic", durable=True),
            "example.text",
            queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
        )
        full(conn.default_channel).declare()
    p = Publisher(replace(settings, publish_attempts=3), stats)
    # When a tick is published
    try:
        with pytest.raises(TickFailed, match="gave up after 3 attempts: nacked by RabbitMQ"):
            through(p, tick(stats))
    finally:
        p.close()
    # Then every nack is counted, and the tick once as failed
    snap = stats.snapshot()
    assert (snap.totals.published, snap.totals.nacked, snap.totals.acked) == (3, 3, 0)
    assert snap.totals.failed == 1
    assert snap.totals.invariant_holds
    assert "nacked" in snap.last_error["reason"]


def test_a_connection_closed_by_rabbitmq_is_reopened(
    publisher: Publisher, stats: Stats, vhost: str, amqp_url: str
) -> None:
    publisher.publish_tick(tick(stats))
    close_connections(vhost)
    result = publisher.publish_tick(tick(stats))
    assert result.outcome == "acked"
    assert [m.body["message_number"] for m in drain(amqp_url, "text")] == [1, 2]
    snap = stats.snapshot()
    assert snap.totals.acked == 2
    assert snap.totals.invariant_holds


def test_a_deleted_exchange_fails_one_tick_with_404_then_heals(
    publisher: Publisher, stats: Stats, amqp_url: str
) -> None:
    publisher.publish_tick(tick(stats))
    with Connection(amqp_url) as conn:
        conn.default_channel.exchange_delete("message")
    with pytest.raises(TopologyError, match=r"\(404\) NOT_FOUND - no exchange 'message'"):
        publisher.publish_tick(tick(stats))
    # The next tick opens a new channel, declares the topology again and goes through.
    assert publisher.publish_tick(tick(stats)).outcome == "acked"
    snap = stats.snapshot()
    assert (snap.totals.acked, snap.totals.unconfirmed, snap.totals.failed) == (2, 1, 1)
    assert snap.totals.invariant_holds
    assert "404" in snap.last_error["reason"]


def test_a_conflicting_exchange_at_run_time_fails_the_tick_naming_it(
    publisher: Publisher, stats: Stats, vhost: str, amqp_url: str
) -> None:
    # Given the exchange replaced by a direct one while the publisher runs
    publisher.publish_tick(tick(stats))
    with Connection(amqp_url) as conn:
        conn.default_channel.exchange_delete("message")
        Exchange("message", "direct", durable=True)(conn.default_channel).declare()
    close_connections(vhost)
    # When the next tick reconnects and declares the topology
    with pytest.raises(TopologyError) as err:
        publisher.publish_tick(tick(stats))
    # Then it fails at once, naming the exchange and quoting RabbitMQ
    text = str(err.value)
    assert "cannot declare exchange 'message' (topic, durable)" in text
    assert "(406) PRECONDITION_FAILED - inequivalent arg 'type'" in text
    snap = stats.snapshot()
    assert snap.totals.failed == 1
    assert snap.totals.invariant_holds


def batch_publisher(settings: Settings, stats: Stats, **overrides: int) -> Publisher:
    return Publisher(replace(settings, **overrides), stats)


def watch_in_flight(p: Publisher) -> list[int]:
    """Record how many publishes await their confirm after each publish call."""
    seen: list[int] = []
    publish = p.stream.publish_many

    def recorded(*args: Any) -> None:
        publish(*args)
        seen.append(p.stream.in_flight)

    p.stream.publish_many = recorded  # type: ignore[method-assign]
    return seen


def test_a_batch_streams_through_a_window_and_is_counted_exactly(
    settings: Settings, stats: Stats, amqp_url: str
) -> None:
    p = batch_publisher(settings, stats, confirm_window=32)
    in_flight = watch_in_flight(p)
    try:
        t = Tick("bulk", math.floor(time.time()), stats.next_number(500), 500)
        assert p.publish_tick(t).outcome == "acked"
    finally:
        p.close()
    assert max(in_flight) <= 32  # never more than the window awaits its confirm
    got = drain(amqp_url, "text")
    assert [m.body["message_number"] for m in got] == list(range(1, 501))
    assert len({m.properties["message_id"] for m in got}) == 500
    snap = stats.snapshot()
    assert (snap.totals.published, snap.totals.acked, snap.totals.pending) == (500, 500, 0)
    assert snap.totals.last_confirmed_number == 500


def test_nacks_with_the_multiple_flag_are_each_counted_once(
    settings: Settings, stats: Stats, amqp_url: str
) -> None:
    # Given a queue that takes 50 messages and then rejects every publish
    with Connection(amqp_url) as conn:
        Queue(
            "full",
            Exchange("message", "topic", durable=True),
            "example.text",
            queue_arguments={"x-max-length": 50, "x-overflow": "reject-publish"},
        )(conn.default_channel).declare()
    p = batch_publisher(settings, stats, confirm_window=64, publish_attempts=2)
    answers: list[tuple[str, int, bool]] = []
    try:
        p.stream.ensure()
        # Listen on the stream's own channel (a private attribute: only the test looks).
        for kind in ("ack", "nack"):
            p.stream._channel.events[f"basic_{kind}"].add(  # type: ignore[union-attr]
                lambda tag, multiple, kind=kind: answers.append((kind, tag, multiple))
            )
        # When a tick of 300 messages is published, 64 at a time
        t = Tick("bulk", math.floor(time.time()), stats.next_number(300), 300)
        with pytest.raises(TickFailed, match="gave up after 2 attempts: 250 nacked"):
            through(p, t)
    finally:
        p.close()
    # Then RabbitMQ answered some nacks for several publishes at once (multiple)...
    assert any(kind == "nack" and multiple for kind, _, multiple in answers)
    # ... and each publish is counted once: 300 + 250 retried, 50 acked, 500 nacked
    snap = stats.snapshot()
    t_ = snap.totals
    assert (t_.published, t_.acked, t_.nacked, t_.unconfirmed, t_.pending) == (550, 50, 500, 0, 0)
    assert t_.failed == 250
    assert t_.invariant_holds


def test_a_batch_that_fails_half_way_counts_as_unconfirmed_on_a_new_channel(
    settings: Settings, stats: Stats, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bug that strikes on the 10th message of a batch, before any is written
    real_publish = Frames.publish
    calls = 0

    def publish(self: Frames, *args: Any, **kwargs: Any) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise RuntimeError("a bug")
        return real_publish(self, *args, **kwargs)

    monkeypatch.setattr(Frames, "publish", publish)
    p = batch_publisher(settings, stats, confirm_window=64)
    try:
        p.stream.ensure()
        broken = set(p.stream.connection.connection.channels.values())
        with pytest.raises(TickFailed, match="unexpected error: RuntimeError: a bug"):
            p.publish_tick(Tick("bulk", time.time(), stats.next_number(100), 100))
        # Then the tick failed with the bug as its reason, the 64 sent are unconfirmed, and
        # the next tick goes out on a new channel (the broken one's tags no longer match)
        assert p.publish_tick(tick(stats)).outcome == "acked"
        assert not broken & set(p.stream.connection.connection.channels.values()) - {
            p.stream.connection.connection  # channel 0 is the connection itself
        }
    finally:
        p.close()
    assert [m.body["message_number"] for m in drain(amqp_url, "text")] == [101]
    t = stats.snapshot().totals
    assert (t.published, t.acked, t.unconfirmed, t.pending, t.failed) == (65, 1, 64, 0, 100)


def test_closing_while_rabbitmq_is_silently_unreachable_returns(
    settings: Settings, stats: Stats, vhost: str
) -> None:
    # Given a publisher that reaches RabbitMQ through a proxy, which then drops every byte
    proxy = Proxy()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
        p = Publisher(replace(settings, amqp_url=url), stats)
        assert p.publish_tick(tick(stats)).outcome == "acked"
        proxy.cut()
        # When the worker process stops and closes it (close-ok can never come)
        closer = threading.Thread(target=p.close, daemon=True)
        closer.start()
        # Then close gives up waiting instead of holding the process forever
        closer.join(timeout=4 * settings.confirm_timeout + 5)
        assert not closer.is_alive()
    finally:
        proxy.close()


def test_a_returned_message_is_published_again_until_a_queue_takes_it(
    settings: Settings, stats: Stats, amqp_url: str
) -> None:
    # Given a tick whose routing key no queue is bound with yet
    t = tick(stats, routing_key="bound.later")
    results: list[Any] = []

    def publish() -> None:
        p = Publisher(settings, stats)  # a publisher belongs to the thread that made it
        try:
            results.append(through(p, t))
        finally:
            p.close()

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        wait_for(lambda: stats.snapshot().totals.returned >= 3, 30, "3 returns")
    finally:
        # When a queue is bound with it
        with Connection(amqp_url) as conn:
            conn.default_channel.queue_bind("text", "message", "bound.later")
        thread.join(30)
    # Then the message was published again until the queue took it: delivered once
    [result] = results
    assert result.outcome == "acked"
    [got] = drain(amqp_url, "text")
    assert got.properties["message_id"] == t.message_id
    totals = stats.snapshot().totals
    assert totals.returned >= 3 and totals.failed == 0 and totals.invariant_holds
    assert totals.published == totals.acked == totals.returned + 1
    assert stats.done(t.message_id, 1) == {0}
