"""Part a: confirmed-publish throughput, each way to a fresh durable queue of its own.

The pika example's pattern, kombu's ``confirm_publish``, and one pubtasks tick of
N messages through the confirm window, with and without batched writes. Every
message is persistent and confirmed; pubtasks also counts each in Redis.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from pubtasks import defaults, message
from pubtasks.bench.names import Names
from pubtasks.errors import PubtasksError
from pubtasks.message import Tick
from pubtasks.publisher import Publisher
from pubtasks.settings import Settings
from pubtasks.stats import Stats

#: The most unconfirmed publishes the pika example keeps in flight.
PIKA_WINDOW = 256


def payload(size: int) -> bytes:
    return b"x" * size


def declare_queue(url: str, names: Names, part: str) -> None:
    with Connection(url) as conn:
        exchange = Exchange(names.exchange, "topic", durable=True)
        Queue(names.queue(part), exchange, f"bench.{part}", durable=True)(
            conn.default_channel
        ).declare()


def pika_baseline(url: str, names: Names, count: int, size: int) -> float:
    """The pika example's pattern: SelectConnection, confirms, at most 256 unconfirmed."""
    try:
        import pika  # noqa: PLC0415 - optional: only the bench needs it (the bench extra)
    except ImportError:
        raise PubtasksError("the pika baseline needs pika: pip install 'pubtasks[bench]'") from None

    declare_queue(url, names, "pika")
    body = payload(size)
    props = pika.BasicProperties(
        app_id="example-publisher", content_type="text/plain", delivery_mode=2
    )
    sent, confirmed = 0, 0
    started = ended = 0.0
    outstanding: list[int] = []
    connection: Any = None
    channel: Any = None

    def publish_more() -> None:
        nonlocal sent
        while sent < count and len(outstanding) < PIKA_WINDOW:
            channel.basic_publish(names.exchange, "bench.pika", body, props)
            sent += 1
            outstanding.append(sent)

    def on_confirm(frame: Any) -> None:
        nonlocal confirmed, ended
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        done = [t for t in outstanding if t <= tag] if multiple else [tag]
        for t in done:
            outstanding.remove(t)
        confirmed += len(done)
        if confirmed >= count:
            ended = time.perf_counter()
            connection.close()
        else:
            publish_more()

    def on_channel(ch: Any) -> None:
        nonlocal channel, started
        channel = ch
        ch.confirm_delivery(on_confirm)
        started = time.perf_counter()
        publish_more()

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    failure: list[BaseException] = []

    def on_open_error(conn: Any, error: BaseException) -> None:
        failure.append(error)
        conn.ioloop.stop()

    info = Connection(url)  # parse the URL as kombu does: "//" is the vhost "/"
    parameters = pika.ConnectionParameters(
        host=info.hostname or "localhost",
        port=info.port or 5672,
        virtual_host=info.virtual_host or "/",
        credentials=pika.PlainCredentials(info.userid or "guest", info.password or "guest"),
    )
    connection = pika.SelectConnection(
        parameters,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda conn, reason: conn.ioloop.stop(),
    )
    connection.ioloop.start()
    if failure or not ended:
        raise PubtasksError(f"the pika baseline did not finish: {failure or 'closed early'}")
    return count / (ended - started)


def kombu_confirm(url: str, names: Names, count: int, size: int) -> float:
    """kombu's own confirm_publish: each publish waits for its confirm."""
    declare_queue(url, names, "kombu")
    body = payload(size)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), exchange=Exchange(names.exchange, "topic"))
        start = time.perf_counter()
        for _ in range(count):
            producer.publish(body, routing_key="bench.kombu", delivery_mode=2)
        return count / (time.perf_counter() - start)


def pubtasks_tick(
    settings: Settings, names: Names, count: int, size: int, batch_writes: bool = True
) -> tuple[float, dict[str, Any]]:
    """One tick of ``count`` messages through the pubtasks publisher, counted in Redis.

    With ``batch_writes`` (the default) the frames go out through kombu's
    ``Producer.batch()``; without, each message through py-amqp's ``basic_publish``.
    """
    part = "pubtasks" if batch_writes else "pubtasks-public"
    s = replace(
        settings,
        exchange=names.exchange,
        queue=names.queue(part),
        routing_key=f"bench.{part}",
        binding_key=f"bench.{part}",
        stats_prefix=names.prefix,
        publish_attempts=1,
        batch_writes=batch_writes,
    )
    stats = Stats.from_url(s.redis_url, s.stats_prefix)
    publisher = Publisher(s, stats)
    try:
        publisher.stream.ensure()
        # The JSON body with its number and times, padded with "text" to `size` bytes.
        # The default entry's name, so the ids are as long as a user's by default.
        probe = Tick(defaults.DEFAULT_ENTRY, time.time(), s.routing_key, 1, count, text="")
        overhead = len(message.body(probe, probe.messages()[0], time.time()))
        tick = replace(
            probe, number=stats.next_number(count), text="x" * max(size - overhead - 6, 0)
        )
        start = time.perf_counter()
        publisher.publish_tick(tick)
        rate = count / (time.perf_counter() - start)
        snap = stats.snapshot().totals
        return rate, {
            "published": snap.published,
            "acked": snap.acked,
            "invariant_holds": snap.invariant_holds,
        }
    finally:
        publisher.close()
        stats.clear()
        stats.client.close()
