"""Integration tests: the confirm stream (the AMQP seam) against the real RabbitMQ."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pubtasks.bench.waiting import wait_for
from pubtasks.confirms import Delivery, Outcome, Settled
from pubtasks.errors import ChannelLost
from pubtasks.properties import kombu_expiration, publish_arguments
from pubtasks.rabbitmq import Channel, Transport
from pubtasks.settings import Settings
from pubtasks.stream import ConfirmStream, Options
from pubtasks.topology import Topology
from tests.helpers import close_connections, drain
from tests.support.proxy import Proxy


@pytest.fixture
def stream(settings: Settings) -> Iterator[ConfirmStream]:
    s = ConfirmStream(Options.from_settings(settings), Topology.from_settings(settings))
    yield s
    s.close()


def deliveries(n: int, entry: str = "e") -> list[tuple[Delivery, bytes]]:
    return [(Delivery(f"k{i}", f"{entry}@{i}", entry, i), b"{}") for i in range(1, n + 1)]


def settle_all(stream: ConfirmStream, timeout: float = 10) -> list[Settled]:
    """Wait until every publish of the stream is answered; return what settled."""
    got: list[Settled] = []

    def answered() -> bool:
        stream.wait(0.1)
        got.extend(stream.settled())
        return stream.in_flight == 0

    wait_for(answered, timeout, "every publish to be answered", 0)
    return got


def publish(stream: ConfirmStream, items: list[tuple[Delivery, bytes]], key: str) -> None:
    props = {"content_type": "application/json", "delivery_mode": 2}
    stream.publish(
        "message", key, [(d, body, {**props, "message_id": d.message_id}) for d, body in items]
    )


@pytest.mark.integration
@pytest.mark.parametrize("batch_writes", [True, False], ids=["batched", "basic_publish"])
def test_acks_stream_back_as_settled_deliveries(
    settings: Settings, amqp_url: str, batch_writes: bool
) -> None:
    s = ConfirmStream(
        Options(settings.amqp_url, settings.confirm_timeout, batch_writes=batch_writes),
        Topology.from_settings(settings),
    )
    try:
        s.ensure()
        publish(s, deliveries(300), "example.text")
        got = settle_all(s)
    finally:
        s.close()
    assert sorted(x.delivery.number for x in got) == list(range(1, 301))
    assert {x.outcome for x in got} == {Outcome.ACKED}
    received = drain(amqp_url, "text")
    assert [m.properties["message_id"] for m in received] == [f"e@{i}" for i in range(1, 301)]
    # kombu's fillers (empty headers, priority 0, content_encoding "binary") are not sent
    assert set(received[0].properties) == {"message_id", "content_type", "delivery_mode"}


@pytest.mark.integration
def test_an_unroutable_publish_settles_acked_and_returned(stream: ConfirmStream) -> None:
    stream.ensure()
    publish(stream, deliveries(1), "nobody.listens")
    [x] = settle_all(stream)
    assert x.outcome is Outcome.ACKED
    assert x.returned and "NO_ROUTE" in str(x.delivery.returned)


@pytest.mark.integration
def test_a_lost_connection_settles_what_was_in_flight_as_unconfirmed(
    stream: ConfirmStream, vhost: str
) -> None:
    # Given publishes that nobody answers yet (the stream reads nothing until it waits)
    stream.ensure()
    publish(stream, deliveries(5), "example.text")
    # When RabbitMQ closes the connection before the stream reads the answers
    close_connections(vhost)
    with pytest.raises(ChannelLost, match="connection lost"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stream.wait(0.1)
    # Then each publish settles exactly once: acked if its answer was read, or unconfirmed
    got = stream.settled()
    assert sorted(x.delivery.number for x in got) == [1, 2, 3, 4, 5]
    assert stream.in_flight == 0
    # ... and the next ensure() reconnects
    stream.ensure()
    publish(stream, deliveries(1), "example.text")
    assert [x.outcome for x in settle_all(stream)] == [Outcome.ACKED]


@pytest.mark.integration
def test_failover_alternates_keep_pubtasks_transport(settings: Settings) -> None:
    # Given a URL whose first node is down (nothing listens on port 1)
    dead = "amqp://guest:guest@127.0.0.1:1//"
    s = ConfirmStream(
        Options(f"{dead};{settings.amqp_url}", settings.confirm_timeout),
        Topology.from_settings(settings),
    )
    try:
        # When the stream connects, failing over to the second
        s.ensure(max_retries=3, on_retry=lambda reason, interval: None)
        # Then it runs on pubtasks' transport there too: batched writes, no fillers
        assert isinstance(s.connection.transport, Transport)
        assert isinstance(s.connection.default_channel, Channel)
        publish(s, deliveries(3), "example.text")
        assert len(settle_all(s)) == 3
    finally:
        s.close()


@pytest.mark.integration
def test_a_stream_is_used_by_the_thread_that_made_it(stream: ConfirmStream) -> None:
    stream.ensure()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            publish(stream, deliveries(1), "example.text")
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert len(errors) == 1 and "thread" in str(errors[0])
    assert stream.in_flight == 0


@pytest.mark.parametrize("milliseconds", [1, 999, 1001, 60000, 86_400_000, 2**40 - 1])
def test_a_message_ttl_reaches_kombu_as_the_exact_milliseconds(milliseconds: int) -> None:
    # kombu takes seconds and sends str(int(seconds * 1000))
    seconds = publish_arguments({"expiration": str(milliseconds)})["expiration"]
    assert str(int(seconds * 1000)) == str(milliseconds)


def test_every_ttl_up_to_a_million_milliseconds_survives_kombus_conversion() -> None:
    assert all(int(kombu_expiration(str(m)) * 1000) == m for m in range(1, 1_000_001))


@pytest.mark.integration
def test_an_abandoned_connection_is_followed_by_one_to_the_next_node(
    settings: Settings, vhost: str, proxy: Proxy
) -> None:
    # Given two URLs, the node's and a proxy's to it, as for two nodes of a cluster
    both = f"amqp://guest:guest@127.0.0.1:5672/{vhost};amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
    s = ConfirmStream(Options(url=both, confirm_timeout=2.0), Topology.from_settings(settings))
    try:
        s.ensure()
        assert s.connection.port == 5672
        # When the publisher gives up on the connection (a confirm that never came)
        s.abandon()
        s.ensure()
        # Then it connects to the next node, not to the one that went silent
        assert s.connection.port == proxy.port
    finally:
        s.close()
