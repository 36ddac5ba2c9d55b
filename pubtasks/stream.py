"""The confirm stream: how pubtasks publishes to RabbitMQ, with publisher confirms.

It uses py-amqp and kombu through their public APIs; what it needs past them (the
batched write, kombu's transport extension points) is the AMQP seam's, ``rabbitmq``.

Everything else talks to RabbitMQ through ``ConfirmStream``, whose API is small:

- ``ensure(timeout, max_retries, on_retry)``: connect (kombu's ``ensure_connection``,
  with its retry), open a confirm-mode channel and declare the topology on it.
  Raises ``Unreachable``, ``AccessRefused``, ``TopologyError`` or ``ChannelLost``.
- ``publish(exchange, routing_key, items)``: one basic.publish per
  ``(Delivery, body, properties)`` through kombu's ``Producer``, with ``mandatory``
  set. Answers come back later.
- ``wait(timeout)``: read RabbitMQ's answers for up to ``timeout`` seconds.
- ``settled()``: the deliveries settled since the last call, as ``Settled``:
  acked, nacked (either with ``multiple``), returned (acked, but unroutable), or
  unconfirmed when the channel or connection went away first.
- ``in_flight``, ``oldest()``, ``blocked``: the window, and RabbitMQ's flow control.
- ``renew()``: after a nack, the next publish goes on a new channel (at most one new
  channel every ``timing.RENEW_EVERY`` seconds).
- ``abandon()``, ``close()``.

``publish`` and ``wait`` raise ``ChannelLost`` when the channel or the
connection goes; its unanswered publishes are then settled as unconfirmed.

**Publisher confirms without kombu's ``confirm_publish``.** That transport option
makes py-amqp swap each channel's ``basic_publish`` for one that waits for the
publish's own confirm, one message at a time (``pubtasks bench`` measures it).
Here ``channel.confirm_select()`` puts the channel in confirm mode, the answers
stream back through ``channel.events``, and ``confirms.Tracker`` settles them,
so up to ``CONFIRM_WINDOW`` publishes await their confirm at once. It is the same
protocol (RabbitMQ's publisher confirms: https://www.rabbitmq.com/docs/confirms).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import amqp.exceptions
from kombu.connection import Connection as KombuConnection
from kombu.exceptions import OperationalError
from kombu.messaging import Producer

from pubtasks import timing
from pubtasks.confirms import Delivery, Outcome, Settled, Tracker
from pubtasks.errors import AccessRefused, ChannelLost, TlsRefused, TopologyError, Unreachable
from pubtasks.properties import publish_arguments
from pubtasks.rabbitmq import WRITE_BATCH, Channel, Connection
from pubtasks.settings import Settings
from pubtasks.topology import Topology
from pubtasks.urls import mask_url

log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """One line for an AMQP or socket error, quoting RabbitMQ's reply code and text."""
    if isinstance(exc, amqp.exceptions.AMQPError):
        return f"({exc.reply_code}) {exc.reply_text}"
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


# -- kombu's py-amqp transport, with publish batches ------------------------------------


@dataclass(frozen=True)
class Options:
    """How the stream connects and publishes."""

    url: str
    confirm_timeout: float  # bounds every wait for an answer from RabbitMQ, and each write
    batch_writes: bool = True
    connect_timeout: float = 2.0
    tls: Any = False  # kombu's Connection(ssl=...): Settings.amqp_tls

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        return cls(
            url=s.amqp_url,
            confirm_timeout=s.confirm_timeout,
            batch_writes=s.batch_writes,
            tls=s.amqp_tls,
        )


class ConfirmStream:
    """Publishes on one confirm-mode channel and streams the answers back as settled deliveries.

    One thread uses a stream (pubtasks keeps one per worker thread); another thread
    may only ``close`` it.
    """

    def __init__(self, options: Options, topology: Topology) -> None:
        self.options = options
        self.topology = topology
        self.where = mask_url(options.url)
        self.blocked: str | None = None  # why RabbitMQ blocked the connection, while it does
        self.connection: KombuConnection = Connection(
            options.url,
            ssl=dict(options.tls)
            if isinstance(options.tls, dict)
            else options.tls,  # kombu writes in it
            connect_timeout=options.connect_timeout,
            heartbeat=0,
            transport_options={
                # Bound every blocking socket operation: a write RabbitMQ stopped reading
                # (a dead peer) and a wait for a declare-ok or close-ok that will never
                # come. drain_events(timeout=...) sets its own limit on top.
                "write_timeout": options.confirm_timeout,
                "read_timeout": options.confirm_timeout,
                "on_blocked": self._on_blocked,
                "on_unblocked": self._on_unblocked,
                "client_properties": {
                    "connection_name": f"pubtasks {socket.gethostname()} pid {os.getpid()}",
                },
            },
        )
        self._thread = threading.get_ident()
        self._channel: Channel | None = None
        self._producer: Producer | None = None
        self._batched = False
        self._tracker = Tracker()
        self._settled: list[Settled] = []
        self._address = ("", "")  # the exchange and routing key of the last publish
        self._opened = 0.0  # when the channel was opened (time.monotonic)

    # -- connection and channel -----------------------------------------------------------

    def ensure(
        self,
        timeout: float | None = None,
        max_retries: int | None = None,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> None:
        """Make sure a connection and a confirm-mode channel with the topology declared exist.

        ``max_retries`` is kombu's: attempts after the first. Raises ``Unreachable`` when
        RabbitMQ does not answer within ``timeout`` or ``max_retries``, ``AccessRefused``
        when it refuses the login or the vhost, ``TopologyError`` when a declaration
        conflicts, and ``ChannelLost`` when the connection drops while the channel opens.
        """
        self._check_thread()
        if self._producer is not None and self.connection.connected:
            return

        def errback(exc: BaseException, interval: float) -> None:
            if isinstance(exc, ssl.SSLError):  # a retry would meet the same certificate
                raise TlsRefused(
                    f"RabbitMQ at {self.where}: TLS failed: {describe(exc)}; check AMQP_SSL "
                    "(ca_certs, certfile, keyfile, server_hostname) and the port of AMQP_URL"
                ) from exc
            reason = describe(exc)
            if on_retry is not None:
                on_retry(reason, interval)
            else:
                log.warning("RabbitMQ at %s: %s; retrying in %.2f s", self.where, reason, interval)

        try:
            self.connection.ensure_connection(
                errback=errback,
                max_retries=max_retries,
                timeout=timeout,
                **timing.RECONNECT.kombu(),
            )
        except amqp.exceptions.AccessRefused as exc:
            self._reset()
            raise AccessRefused(
                f"RabbitMQ at {self.where} refused the login: {describe(exc)}; "
                "check the user and password in AMQP_URL"
            ) from exc
        except (amqp.exceptions.ConnectionError, amqp.exceptions.ChannelError) as exc:
            self._reset()
            raise AccessRefused(
                f"RabbitMQ at {self.where} refused the connection: {describe(exc)}; "
                "check the vhost and permissions in AMQP_URL"
            ) from exc
        except (*self.connection.recoverable_connection_errors, OSError, OperationalError) as exc:
            # kombu re-raises the last recoverable error as OperationalError; name its cause.
            cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ else exc
            self._reset()
            if isinstance(cause, ssl.SSLError):  # with no retry left, errback was not called
                raise TlsRefused(
                    f"RabbitMQ at {self.where}: TLS failed: {describe(cause)}; check AMQP_SSL "
                    "(ca_certs, certfile, keyfile, server_hostname) and the port of AMQP_URL"
                ) from exc
            raise Unreachable(
                f"RabbitMQ at {self.where} is unreachable: {describe(cause)}"
            ) from exc
        if self._producer is None:
            try:
                self._open_channel()
            except (*self.connection.connection_errors, OSError) as exc:
                self._reset()
                raise ChannelLost(f"connection lost opening the channel: {describe(exc)}") from exc

    def _open_channel(self) -> None:
        channel = self.connection.channel()
        channel.confirm_select()
        tracker = Tracker()
        # RabbitMQ answers each publish of a confirm channel with basic.ack or basic.nack,
        # possibly for every delivery tag up to its own at once (``multiple``).
        channel.events["basic_ack"].add(
            lambda tag, multiple: self._settled.extend(
                tracker.confirm(tag, multiple, Outcome.ACKED)
            )
        )
        channel.events["basic_nack"].add(
            lambda tag, multiple: self._settled.extend(
                tracker.confirm(tag, multiple, Outcome.NACKED)
            )
        )
        self._channel, self._tracker = channel, tracker
        self._opened = time.monotonic()
        for declaration in self.topology.declarations():
            try:
                declaration.declare(channel)
            except amqp.exceptions.ChannelError as exc:
                self._drop_channel()
                raise TopologyError(
                    declaration.failure.format(what=declaration.what)
                    + f": RabbitMQ replied {describe(exc)}"
                ) from exc
        producer = Producer(channel, auto_declare=False, on_return=self._on_return)
        self._batched = self.options.batch_writes and producer.supports_batch_publish
        if self.options.batch_writes and not self._batched:
            log.warning("kombu does not batch publishes here; each goes out on its own")
        self._producer = producer

    def _on_return(self, exc: BaseException, exchange: str, routing_key: str, msg: Any) -> None:
        # basic.return comes before the basic.ack of the same publish (RabbitMQ acks a
        # message it accepted but could not route), so mark the delivery now and count
        # it as returned when the ack settles it.
        reply = f"unroutable: {describe(exc)} (exchange {exchange!r}, routing key {routing_key!r})"
        self._tracker.returned(msg.properties.get("message_id", ""), reply)

    def _on_blocked(self, reason: str) -> None:
        self.blocked = reason
        log.warning("RabbitMQ at %s blocked publishing: %s", self.where, reason)

    def _on_unblocked(self) -> None:
        self.blocked = None
        log.warning("RabbitMQ at %s unblocked publishing", self.where)

    def _drop_channel(self) -> None:
        """Forget the channel: its unanswered publishes are unconfirmed."""
        self._settled.extend(self._tracker.lose_all())
        channel, self._channel, self._producer = self._channel, None, None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # it is broken already; closing is a courtesy
                log.debug("closing a broken channel failed", exc_info=True)

    def _reset(self) -> None:
        """Forget the connection and its channel, without talking to RabbitMQ."""
        self._settled.extend(self._tracker.lose_all())
        self._channel, self._producer = None, None
        self.blocked = None
        self.connection.collect()

    def renew(self) -> None:
        """RabbitMQ nacked publishes on this channel: publish the next ones on a new one,
        unless the channel is less than ``timing.RENEW_EVERY`` seconds old.

        A quorum queue's state is kept per channel (the queue's leader among others): a
        channel opened while the queue elected a new leader was seen nacked on every
        publish from then on, while a new one on the same node was acked once the
        election was over (``scripts/quorum_election.py``). A queue that rejects
        publishes (``x-overflow: reject-publish``) nacks on any channel: the pause
        keeps its entry from making this process open a channel per nack. Unanswered
        publishes on the old channel are unconfirmed.
        """
        now = time.monotonic()
        if now - self._opened < timing.RENEW_EVERY:
            return
        self._drop_channel()

    def abandon(self) -> None:
        """Drop the connection (it may be silently dead): its unanswered publishes are
        unconfirmed, and a late answer on it can never be counted. With several nodes in
        AMQP_URL, the next connection goes to the next node (kombu's failover cycle):
        a node that went silent is not the first one tried again."""
        self._reset()
        self.connection.maybe_switch_next()

    def close(self) -> None:
        """Close the channel and the connection; each wait for RabbitMQ's answer is
        bounded by ``confirm_timeout`` (py-amqp itself would wait for ever)."""
        self._drop_channel()
        self.connection.release()

    # -- publishing ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Publishes awaiting their answer."""
        return len(self._tracker)

    def oldest(self) -> Delivery | None:
        """The publish that has waited longest for its answer."""
        return self._tracker.oldest()

    def settled(self) -> list[Settled]:
        """The deliveries settled since the last call."""
        settled, self._settled = self._settled, []
        return settled

    def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[Delivery, bytes, Mapping[str, Any]]],
    ) -> None:
        """basic.publish each body with its properties (``message.properties``: AMQP's
        names, ``message_id`` and ``content_type`` among them), and ``mandatory``.

        Every delivery is tracked before the first is handed over: if the publishing
        fails half-way, the channel is thrown away (its delivery tags would no longer
        match the tracker's), which settles the whole lot as unconfirmed.
        """
        self.publish_many([(exchange, routing_key, items)])

    def publish_many(
        self, groups: Sequence[tuple[str, str, Sequence[tuple[Delivery, bytes, Mapping[str, Any]]]]]
    ) -> None:
        """``publish`` for several (exchange, routing key, items) in one socket write per
        ``WRITE_BATCH`` publishes: the ticks of a burst, each to its own address."""
        self._check_thread()
        producer = self._producer
        if producer is None:
            raise RuntimeError("ConfirmStream.publish before ensure()")
        now = time.time()
        for _, _, items in groups:
            for delivery, _, _ in items:
                delivery.published_at = now
                self._tracker.published(delivery)
        try:
            with self._writes(producer):
                for exchange, routing_key, items in groups:
                    self._address = (exchange, routing_key)
                    for _, body, properties in items:
                        producer.publish(
                            body,
                            exchange=exchange,
                            routing_key=routing_key,
                            mandatory=True,
                            **publish_arguments(properties),
                        )
        except (*self.connection.connection_errors, *self.connection.channel_errors) as exc:
            self._lost(exc)
        except Exception:
            self._drop_channel()
            raise

    def _writes(self, producer: Producer) -> contextlib.AbstractContextManager[object]:
        if self._batched:
            batch: contextlib.AbstractContextManager[object] = producer.batch(max_size=WRITE_BATCH)
            return batch
        return contextlib.nullcontext()

    def wait(self, timeout: float) -> None:
        """Read RabbitMQ's answers for at most ``timeout`` seconds (less if one comes)."""
        self._check_thread()
        try:
            self.connection.drain_events(timeout=timeout)
        except TimeoutError:  # nothing came: not an error
            return
        except (*self.connection.connection_errors, *self.connection.channel_errors) as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, amqp.exceptions.ChannelError):
            self._drop_channel()
            exchange, routing_key = self._address
            raise ChannelLost(
                f"RabbitMQ closed the channel publishing to exchange {exchange!r} "
                f"with routing key {routing_key!r}: {describe(exc)}",
                permanent=isinstance(exc, amqp.exceptions.IrrecoverableChannelError),
            ) from exc
        self._reset()
        raise ChannelLost(f"connection lost: {describe(exc)}") from exc

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "a ConfirmStream is used by the thread that made it: its channel's delivery "
                "tags and its socket writes are not shared between threads"
            )
