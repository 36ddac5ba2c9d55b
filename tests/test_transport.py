"""Integration tests: kombu's Redis transport when Redis dies under a consumer that holds
a reserved task, as in a Sentinel failover (pubtasks/transport.py says why and how).

Each test has a Redis of its own (``RedisNode``, append-only, fsynced), so that killing
it touches nothing shared. The consumer is driven through the steps Celery's worker
takes: a task consumer on the connection's default channel (prefetch 2, one task held,
the next BRPOP in flight, as an idle consumer always has), a second channel consuming
an auto-delete fanout queue (Celery's remote control), then, once Redis is gone,
``collect()`` and ``close()`` of the connection, ignoring connection errors
(``Consumer.on_connection_error_after_connected``).
"""

from __future__ import annotations

import contextlib
import gc
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.common import ignore_errors
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message

from pubtasks.bench.waiting import wait_for
from pubtasks.celery import app
from pubtasks.transport import Transport
from tests.support.nodes import RedisNode

pytestmark = [pytest.mark.integration]

OPTIONS = {"visibility_timeout": 3600}
TASKS = Queue("tasks", Exchange("tasks", type="direct"), routing_key="tasks")
CONTROL = Queue("control", Exchange("control", type="fanout"), auto_delete=True)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisNode]:
    server = RedisNode(tmp_path / "redis-data")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Holding:
    """A consumer's connection, holding one reserved task, with a BRPOP in flight."""

    connection: Connection
    message: Message


def hold_a_task(connection: Connection, url: str) -> Holding:
    with Connection(url, transport_options=OPTIONS) as producer:
        producer.Producer().publish({"n": 1}, exchange=TASKS.exchange, routing_key="tasks",
                                    declare=[TASKS])  # fmt: skip
    held: list[Message] = []
    tasks = connection.Consumer(TASKS, callbacks=[lambda _, m: held.append(m)], accept=["json"])
    tasks.qos(prefetch_count=2)
    tasks.consume()
    connection.Consumer(CONTROL, channel=connection.channel(), no_ack=True).consume()

    def delivered() -> bool:  # the control channel's subscription is an event too
        with contextlib.suppress(socket.timeout):
            connection.drain_events(timeout=0.5)
        return bool(held)

    wait_for(delivered, 10, "the task to be delivered", 0)
    with contextlib.suppress(socket.timeout):  # nothing more: the next BRPOP stays in flight
        connection.drain_events(timeout=0.1)
    return Holding(connection, held[0])


def lose_redis(holding: Holding, server: RedisNode) -> None:
    """Redis dies; the consumer collects and closes its connection as Celery's does."""
    server.kill()
    connection = holding.connection
    with contextlib.suppress(Exception):
        connection.collect(socket_timeout=1.0)
    ignore_errors(connection, connection.close)


def unacked(server: RedisNode) -> dict[Any, Any]:
    client = redis.Redis.from_url(server.url)
    try:
        return dict(client.hgetall("unacked"))
    finally:
        client.close()


# kombu's own transport also leaves the remote-control channel's sockets open: collected
# (and their ResourceWarning dropped) within this test, not in a later one
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_kombus_own_transport_crashes_there(own_redis: RedisNode) -> None:
    """What pubtasks/transport.py works around; when kombu fixes it, this fails, and the
    seam can go."""
    # Given kombu's own Redis transport, consuming with a task held (kombu 5.7.0)
    connection = Connection(own_redis.url, transport="redis", transport_options=OPTIONS)
    holding = hold_a_task(connection, own_redis.url)
    # When Redis dies, then the close Celery makes raises what Celery cannot survive:
    # the channel that holds the task was left open by collect(), whose connection's
    # client it then needs to give the task back
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'hostname'"):
        lose_redis(holding, own_redis)
    del holding, connection
    gc.collect()


def test_pubtasks_transport_closes_and_the_held_task_is_neither_lost_nor_stuck(
    own_redis: RedisNode,
) -> None:
    # Given pubtasks' transport, consuming with a task held
    connection = app.connection_for_read(own_redis.url, transport_options=OPTIONS)
    assert connection.get_transport_cls() is Transport  # the app's: Celery's connections
    holding = hold_a_task(connection, own_redis.url)
    channel = holding.message.channel
    # When Redis dies, and the consumer collects and closes its connection
    lose_redis(holding, own_redis)
    # Then nothing is raised, and the channel is closed
    assert channel.closed
    # And the task, which could not be given back, is still in kombu's unacked hash
    # once Redis is back (where pubtasks' supervisor gives back what no live worker holds)
    own_redis.start()
    assert holding.message.delivery_tag.encode() in unacked(own_redis)
    # And the worker, which still runs the task, can ack it through the closed channel
    holding.message.ack()
    assert unacked(own_redis) == {}


def test_a_channel_left_without_its_connection_says_so_as_a_connection_error(
    own_redis: RedisNode,
) -> None:
    # Given a channel of pubtasks' transport whose connection was collected
    connection = app.connection_for_read(own_redis.url, transport_options=OPTIONS)
    channel = connection.channel()
    connection.collect()
    # When it needs a new Redis connection, then the error is one kombu and Celery
    # handle as a lost connection (kombu's own raises AttributeError)
    with pytest.raises(redis.ConnectionError, match="connection was closed"):
        channel._connparams()
