"""Part a: confirmed-publish throughput, each way to a fresh durable queue of its own.

The pika example's pattern, kombu's ``confirm_publish``, and one pubtasks tick of
N messages through the confirm window, with and without batched writes. Every
message is persistent and confirmed; pubtasks also counts each in Redis. pika
publishes what a pubtasks tick does: bodies of the same size, each message with
its own ``message_id`` of the same form, and ``app_id``, ``content_type`` and
``timestamp``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from pubtasks import defaults, ids, message
from pubtasks.bench.broker import Broker
from pubtasks.bench.names import Names
from pubtasks.errors import PubtasksError
from pubtasks.message import Recipe, Tick
from pubtasks.publisher import Publisher
from pubtasks.settings import Settings, shorthand
from pubtasks.stats import Stats

#: The most unconfirmed publishes the pika example keeps in flight.
PIKA_WINDOW = 256


def payload(size: int) -> bytes:
    return b"x" * size


def declare_queue(broker: Broker, names: Names, part: str) -> None:
    with broker.connection() as conn:
        exchange = Exchange(names.exchange, "topic", durable=True)
        Queue(names.queue(part), exchange, f"bench.{part}", durable=True)(
            conn.default_channel
        ).declare()


#: The serialised properties of a message whose message_id has ``n`` bytes, in bytes:
#: flags 2, content_type 1 + 16, delivery_mode 1, message_id 1 + n, timestamp 8, app_id 1 + 8.
PROPERTIES_OVERHEAD = 38


def id_width(properties_size: int) -> int:
    """The message_id length that makes a default message's properties this many bytes."""
    return properties_size - PROPERTIES_OVERHEAD


def pika_baseline(
    broker: Broker, names: Names, count: int, size: int, properties_size: int | None = None
) -> float:
    """The pika example's pattern: SelectConnection, confirms, at most 256 unconfirmed.

    Each message has the properties of a pubtasks tick's: by default the same
    message_ids; with ``properties_size``, ids padded so the properties are that long.
    """
    try:
        import pika  # noqa: PLC0415 - optional: only the bench needs it (the bench extra)
    except ImportError:
        raise PubtasksError("the pika baseline needs pika: pip install 'pubtasks[bench]'") from None

    declare_queue(broker, names, "pika")
    body = payload(size)
    # Like for like with a pubtasks tick: the same properties, each message its own id.
    base_id = ids.message_id(defaults.DEFAULT_ENTRY, time.time())
    width = None if properties_size is None else id_width(properties_size)
    sent, confirmed = 0, 0
    started = ended = 0.0
    outstanding: list[int] = []
    connection: Any = None
    channel: Any = None

    def publish_more() -> None:
        nonlocal sent
        while sent < count and len(outstanding) < PIKA_WINDOW:
            props = pika.BasicProperties(
                app_id=defaults.APP_ID,
                content_type=message.CONTENT_TYPE,
                delivery_mode=2,
                message_id=f"{base_id}.{sent}" if width is None else f"{sent:0{width}d}",
                timestamp=int(time.time()),
            )
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

    parameters = broker.pika_parameters()
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


def kombu_confirm(broker: Broker, names: Names, count: int, size: int) -> float:
    """kombu's own confirm_publish: each publish waits for its confirm."""
    declare_queue(broker, names, "kombu")
    body = payload(size)
    with broker.connection(transport_options={"confirm_publish": True}) as conn:
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
    exchanges, queues = shorthand(names.exchange, "topic", names.queue(part), f"bench.{part}")
    s = replace(
        settings,
        exchange=names.exchange,
        routing_key=f"bench.{part}",
        exchanges=exchanges,
        queues=queues,
        stats_prefix=names.prefix,
        publish_attempts=1,
        batch_writes=batch_writes,
    )
    stats = Stats.of(s)
    publisher = Publisher(s, stats)
    try:
        publisher.stream.ensure()
        # The JSON body with its number and times, padded with "text" to `size` bytes.
        # The default entry's name, so the ids are as long as a user's by default.
        recipe = Recipe(exchange=s.exchange, routing_key=s.routing_key)
        probe = Tick(defaults.DEFAULT_ENTRY, time.time(), 1, count, recipe, text="")
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
        stats.close()
