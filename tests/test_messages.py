"""Integration: each entry's own message and topology, on the real RabbitMQ and Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from pubtasks.errors import TickFailed, TopologyError
from pubtasks.message import Tick
from pubtasks.publisher import Publisher
from pubtasks.schedule import every
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from tests.helpers import take

pytestmark = pytest.mark.integration

ARABIC = {"مفتاح": " قيمة", "键": "值", "キー": "値"}  # the pika example's header keys


@pytest.fixture
def env(amqp_url: str, redis_url: str) -> dict[str, str]:
    return {"AMQP_URL": amqp_url, "REDIS_URL": redis_url}


def configure(env: dict[str, str], prefix: str, entries: dict[str, Any], **conf: Any) -> Settings:
    schedule = {
        name: {"task": "pubtasks.publish", "schedule": every(), "kwargs": kwargs}
        for name, kwargs in entries.items()
    }
    return Settings.load(
        env, {"STATS_PREFIX": prefix, "CONFIRM_TIMEOUT": 2.0, "beat_schedule": schedule, **conf}
    )


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    made: list[Publisher] = []
    yield made
    for p in made:
        p.close()


def publish(made: list[Publisher], s: Settings, stats: Stats, entry: str, **tick: Any) -> Tick:
    p = Publisher(s, stats)
    made.append(p)
    t = Tick(entry, round(time.time(), 1), stats.next_number(), recipe=s.recipes[entry], **tick)
    p.publish_tick(t)
    return t


def bind(amqp_url: str, queue: str, exchange: Exchange, key: str = "") -> None:
    """A consumer's own queue, bound as a consumer would bind it."""
    with Connection(amqp_url) as conn:
        Queue(queue, exchange, key, durable=False)(conn.default_channel).declare()


@pytest.mark.parametrize("batch_writes", [True, False], ids=["batched", "basic_publish"])
def test_an_entrys_own_body_headers_and_properties_arrive_as_given(
    env: dict[str, str],
    prefix: str,
    stats: Stats,
    amqp_url: str,
    publishers: list[Publisher],
    batch_writes: bool,
) -> None:
    heartbeat = Exchange("heartbeat", "fanout")
    s = configure(
        env,
        prefix,
        {
            "heartbeat": {
                "exchange": "heartbeat",
                "routing_key": "",
                "body": "alive",
                "headers": {**ARABIC, "nested": {"list": [1, "two", None, True]}},
                "properties": {
                    "priority": 7,
                    "expiration": 1001,  # exact: kombu takes seconds, RabbitMQ milliseconds
                    "type": "heartbeat",
                    "correlation_id": "corr-1",
                    "reply_to": "replies",
                    "delivery_mode": 1,
                },
            }
        },
        EXCHANGES=[heartbeat],
        BATCH_WRITES=batch_writes,
    )
    p = Publisher(s, stats)
    publishers.append(p)
    p.stream.ensure()  # declares the fanout; a consumer then binds its queue
    bind(amqp_url, "watcher", heartbeat)
    t = publish(publishers, s, stats, "heartbeat")
    [got] = take(amqp_url, "watcher")
    assert got.body == b"alive"
    props = got.properties
    assert props.pop("timestamp") >= int(t.scheduled_at) - 1
    assert props == {
        "message_id": t.message_id,
        "app_id": "pubtasks",
        "content_type": "text/plain",
        "content_encoding": "utf-8",
        "delivery_mode": 1,
        "priority": 7,
        "expiration": "1001",
        "type": "heartbeat",
        "correlation_id": "corr-1",
        "reply_to": "replies",
        "application_headers": {
            **ARABIC,
            "nested": {"list": [1, "two", None, True]},
            "x-message-number": t.number,
            "x-scheduled-at": t.scheduled_at,
        },
    }
    entry = stats.snapshot().entries["heartbeat"]
    assert (entry.published, entry.acked, entry.returned, entry.failed) == (1, 1, 0, 0)


def test_a_payload_builds_each_body_at_publish_time(
    env: dict[str, str], prefix: str, stats: Stats, amqp_url: str, publishers: list[Publisher]
) -> None:
    s = configure(env, prefix, {"snap": {"payload": "tests.payloads:snapshot"}})
    t = publish(publishers, s, stats, "snap", batch=3)
    got = take(amqp_url, "text")
    assert [json.loads(m.body) for m in got] == [
        {
            "entry": "snap",
            "scheduled_at": t.scheduled_at,
            "message_number": out.number,
            "message_id": out.message_id,
            "kind": "snapshot",
        }
        for out in t.messages()
    ]
    assert [m.properties["application_headers"]["x-message-number"] for m in got] == [
        out.number for out in t.messages()
    ]
    assert {m.properties["content_type"] for m in got} == {"application/json"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            "tests.payloads:broken",
            "payload tests.payloads:broken raised RuntimeError: the snapshot source is down",
        ),
        ("tests.payloads:unencodable", "payload tests.payloads:unencodable returned a body that"),
    ],
)
def test_a_failing_payload_fails_its_tick_with_nothing_published(
    env: dict[str, str],
    prefix: str,
    stats: Stats,
    amqp_url: str,
    publishers: list[Publisher],
    payload: str,
    reason: str,
) -> None:
    s = configure(env, prefix, {"snap": {"payload": payload}})
    with pytest.raises(TickFailed, match=r"payload tests\.payloads:"):
        publish(publishers, s, stats, "snap")
    snap = stats.snapshot()
    t = snap.entries["snap"]
    assert (t.published, t.pending, t.failed) == (0, 0, 1)
    assert reason in snap.last_error["reason"]


def test_queues_with_arguments_a_quorum_queue_and_a_message_ttl(
    env: dict[str, str], prefix: str, stats: Stats, amqp_url: str, publishers: list[Publisher]
) -> None:
    jobs = Exchange("jobs", "direct")
    s = configure(
        env,
        prefix,
        {
            "nightly": {"exchange": "jobs", "routing_key": "nightly", "body": {"job": "rebuild"}},
            "tick": {
                "exchange": "jobs",
                "routing_key": "ticks",
                "properties": {"expiration": 60000},
            },
        },
        QUEUES=[
            Queue("nightly", jobs, "nightly", queue_arguments={"x-queue-type": "quorum"}),
            Queue("ticks", jobs, "ticks", queue_arguments={"x-message-ttl": 60000}),
        ],
    )
    publish(publishers, s, stats, "nightly")
    publish(publishers, s, stats, "tick")
    [job] = take(amqp_url, "nightly")
    assert json.loads(job.body) == {"job": "rebuild"}
    [tick] = take(amqp_url, "ticks")
    assert tick.properties["expiration"] == "60000"
    with Connection(amqp_url) as conn:  # RabbitMQ made the queue a quorum queue
        conn.default_channel.queue_declare(
            "nightly", durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
    totals = stats.snapshot().totals
    assert (totals.published, totals.acked, totals.failed) == (2, 2, 0)


def test_a_queue_that_exists_with_the_other_type_is_one_clear_error(
    env: dict[str, str], prefix: str, stats: Stats, amqp_url: str, publishers: list[Publisher]
) -> None:
    with Connection(amqp_url) as conn:
        Queue("nightly", durable=True)(conn.default_channel).declare()  # classic
    s = configure(
        env,
        prefix,
        {},
        QUEUES=[
            Queue("nightly", Exchange("jobs"), "n", queue_arguments={"x-queue-type": "quorum"})
        ],
    )
    p = Publisher(s, stats)
    publishers.append(p)
    with pytest.raises(TopologyError) as err:
        p.stream.ensure()
    assert str(err.value).startswith(
        "cannot declare queue 'nightly' (durable, x-queue-type=quorum): RabbitMQ replied (406) "
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"
    )


def test_queue_type_quorum_over_an_existing_classic_queue_is_the_same_clear_error(
    env: dict[str, str], prefix: str, stats: Stats, amqp_url: str, publishers: list[Publisher]
) -> None:
    with Connection(amqp_url) as conn:
        Queue("text", durable=True)(conn.default_channel).declare()  # classic, as before
    p = Publisher(configure(env, prefix, {}, QUEUE_TYPE="quorum"), stats)
    publishers.append(p)
    with pytest.raises(TopologyError) as err:
        p.stream.ensure()
    assert str(err.value).startswith(
        "cannot declare queue 'text' (durable, x-queue-type=quorum): RabbitMQ replied (406) "
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"
    )


def test_a_quorum_queue_takes_the_ticks_on_one_node_too(
    env: dict[str, str], prefix: str, stats: Stats, amqp_url: str, publishers: list[Publisher]
) -> None:
    p = Publisher(configure(env, prefix, {}, QUEUE_TYPE="quorum"), stats)
    publishers.append(p)
    n = stats.next_number()
    assert p.publish_tick(Tick("publish-text", round(time.time(), 1), n)).outcome == "acked"
    [got] = take(amqp_url, "text")
    assert json.loads(got.body)["message_number"] == n
