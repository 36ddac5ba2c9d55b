"""The confirm stream: the one module that knows py-amqp and kombu's transport.

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
  channel every ``RENEW_EVERY`` seconds).
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

**Batched writes (``BATCH_WRITES``, on by default).** kombu 5.7's
``Producer.batch()`` lets a transport buffer publishes; its py-amqp transport
has no such session. ``Transport`` below is kombu's py-amqp transport, extended
the way kombu's own Redis transport does it: it declares ``batch_publish`` and its
channel implements ``create_publish_batch``. ``FrameBatch`` encodes each publish
with ``framing.Frames`` (byte for byte what py-amqp writes) and writes
``WRITE_BATCH`` publishes to the socket at once.

**The AMQP seam.** What this module touches past py-amqp's and kombu's public APIs
(written against py-amqp 5.4 and kombu 5.7, tested at both ends of what pyproject
admits), here and nowhere else in pubtasks:

- kombu's transport extension points: ``Transport.implements`` (declaring
  ``batch_publish``) and the channel's ``create_publish_batch``, which kombu's
  ``Producer.batch()`` calls. kombu's own Redis transport is the model; there is no
  public way to give its py-amqp transport a publish batch.
- The socket write of the batch, below.

The write:

- **What**: ``connection.transport.write(frames)`` with frames built here, not by
  py-amqp's ``frame_writer``.
- **Why**: py-amqp frames every message anew (serialising its properties is most
  of a publish's cost) and writes each alone; a tick's messages differ only in
  ``message_id``.
- **The public alternative, measured**: ``BATCH_WRITES = False`` sends each message
  through py-amqp's ``basic_publish``, with the same bytes on the wire. ``pubtasks
  bench`` measures both paths against the pika example in the same run;
  ``docs/performance.md`` has the figures, and what the public path costs.
- **What it bypasses, and why that is safe**: ``frame_writer``'s buffer lock
  (py-amqp #462/#466) guards several threads publishing on one connection; a
  ``ConfirmStream`` is used by one thread only, and checks it. ``basic_publish``'s
  look for ``connection.blocked`` before writing is done here too.
  ``connection.bytes_sent``, which only the heartbeat check reads, is not counted:
  heartbeats are off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import amqp.exceptions
from kombu.connection import Connection as KombuConnection
from kombu.exceptions import OperationalError
from kombu.messaging import Producer
from kombu.transport import pyamqp

from pubtasks import timing
from pubtasks.confirms import Delivery, Outcome, Settled, Tracker
from pubtasks.errors import AccessRefused, ChannelLost, TopologyError, Unreachable
from pubtasks.framing import Frames
from pubtasks.settings import Settings
from pubtasks.topology import Topology
from pubtasks.urls import mask_url

log = logging.getLogger(__name__)

#: Publishes whose frames go to the socket in one write (kombu's ``Producer.batch`` size).
WRITE_BATCH = 128

RENEW_EVERY = timing.RENEW_EVERY  # a channel's least life before a nack renews it

#: Backoff between connection attempts: kombu's interval_start, interval_step, interval_max.
RECONNECT = {"interval_start": 0.0, "interval_step": 0.25, "interval_max": 1.0}


def describe(exc: BaseException) -> str:
    """One line for an AMQP or socket error, quoting RabbitMQ's reply code and text."""
    if isinstance(exc, amqp.exceptions.AMQPError):
        return f"({exc.reply_code}) {exc.reply_text}"
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


#: The properties kombu's ``Producer.publish`` takes under names of its own.
KOMBU_NAMES = {"application_headers": "headers"}


def kombu_expiration(milliseconds: str) -> float:
    """A message TTL in milliseconds, as kombu's ``Producer.publish`` takes it.

    kombu takes seconds and sends ``str(int(seconds * 1000))``; ``m / 1000`` can come
    back as ``m - 1`` (1001 / 1000 * 1000 is 1000.9999999999999), so half a
    millisecond more is given, which the truncation removes: exact below 2**40 ms.
    """
    return (int(milliseconds) + 0.5) / 1000


def publish_arguments(properties: Mapping[str, Any]) -> dict[str, Any]:
    """AMQP basic properties (``message.properties``) as ``Producer.publish`` keywords."""
    arguments = {KOMBU_NAMES.get(k, k): v for k, v in properties.items()}
    expiration = arguments.get("expiration")
    if expiration is not None:
        arguments["expiration"] = kombu_expiration(expiration)
    return arguments


def drop_fillers(properties: dict[str, Any]) -> None:
    """Remove what kombu adds to every message without meaning anything by it.

    kombu sends an empty headers table and priority 0 (the lowest, as if unset), and
    marks a bytes body whose caller named no encoding as ``content_encoding="binary"``.
    Leaving them out says the same and keeps the properties within
    ``message.PROPERTIES_BUDGET``.
    """
    for name in ("application_headers", "priority"):
        if not properties.get(name):
            properties.pop(name, None)
    if properties.get("content_encoding") == "binary":
        del properties["content_encoding"]


# -- kombu's py-amqp transport, with publish batches ------------------------------------


class FrameBatch:
    """kombu's publish-batch session (``with producer.batch():``) on a pubtasks channel.

    Keeps the frames of up to ``max_size`` publishes and writes them in one go.
    Leaving the block writes the rest; an exception inside it discards what was
    not written yet (kombu calls ``discard``).
    """

    def __init__(self, channel: Channel, max_size: int) -> None:
        self.channel = channel
        self.max_size = max_size
        self._unwritten: list[bytes] = []

    def publish(
        self,
        message: Any,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        immediate: bool = False,
        **_: Any,  # timeout and confirm_timeout: the socket's write timeout bounds a write
    ) -> None:
        self._unwritten.append(
            self.channel.frames.publish(
                message.body,
                message.properties,
                exchange,
                routing_key,
                mandatory=mandatory,
                immediate=immediate,
            )
        )
        if len(self._unwritten) >= self.max_size:
            self.flush()

    def flush(self) -> None:
        if not self._unwritten:
            return
        data, self._unwritten = b"".join(self._unwritten), []
        connection = self.channel.connection
        if connection is None:
            raise amqp.exceptions.RecoverableConnectionError("basic_publish: connection closed")
        if connection.client_properties.get("capabilities", {}).get("connection.blocked"):
            # As py-amqp's basic_publish: read what RabbitMQ sent first, so that a
            # connection.blocked notice is seen (``on_blocked``) before writing more.
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=0)
        try:
            connection.transport.write(data)  # the write described in the module docstring
        except TimeoutError as exc:  # as py-amqp's basic_publish: the socket is dead
            raise amqp.exceptions.RecoverableConnectionError("basic_publish: timed out") from exc

    def discard(self) -> None:
        self._unwritten = []

    def close(self) -> None:
        self._unwritten = []


class Channel(pyamqp.Channel):
    """kombu's py-amqp channel, without kombu's filler properties, with publish batches."""

    _frames: Frames | None = None

    @property
    def frames(self) -> Frames:
        """The frame encoder of this channel (made on first use: it needs frame_max)."""
        if self._frames is None:
            self._frames = Frames(self.channel_id, self.connection.frame_max)
        return self._frames

    def prepare_message(self, *args: Any, **kwargs: Any) -> Any:
        message = super().prepare_message(*args, **kwargs)  # type: ignore[no-untyped-call]
        drop_fillers(message.properties)
        return message

    def create_publish_batch(self, max_size: int) -> FrameBatch:
        return FrameBatch(self, max_size)


class _AmqpConnection(pyamqp.Connection):
    Channel = Channel


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport, declaring the publish batches its channel implements."""

    Connection = _AmqpConnection
    implements = pyamqp.Transport.implements.extend(batch_publish=True)


class SSLTransport(pyamqp.SSLTransport):
    """The same for ``amqps://``."""

    Connection = _AmqpConnection
    implements = Transport.implements


class Connection(KombuConnection):
    """A kombu Connection on pubtasks' transport, for every URL, failover alternates too."""

    def get_transport_cls(self) -> type[pyamqp.Transport]:
        # kombu resolves the URL's scheme again on every failover (``switch``); keep its
        # choice between TLS and plain TCP, on pubtasks' subclass of it.
        chosen = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return SSLTransport if issubclass(chosen, pyamqp.SSLTransport) else Transport


# -- the stream -------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How the stream connects and publishes."""

    url: str
    confirm_timeout: float  # bounds every wait for an answer from RabbitMQ, and each write
    batch_writes: bool = True
    connect_timeout: float = 2.0

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        return cls(url=s.amqp_url, confirm_timeout=s.confirm_timeout, batch_writes=s.batch_writes)


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
        self.connection: KombuConnection = Connection(  # type: ignore[no-untyped-call]
            options.url,
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
            reason = describe(exc)
            if on_retry is not None:
                on_retry(reason, interval)
            else:
                log.warning("RabbitMQ at %s: %s; retrying in %.2f s", self.where, reason, interval)

        try:
            self.connection.ensure_connection(
                errback=errback, max_retries=max_retries, timeout=timeout, **RECONNECT
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
                    f"cannot declare {declaration.what}: RabbitMQ replied {describe(exc)}"
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
        unless the channel is less than ``RENEW_EVERY`` seconds old.

        A quorum queue's state is kept per channel (the queue's leader among others): a
        channel opened while the queue elected a new leader was seen nacked on every
        publish from then on, while a new one on the same node was acked once the
        election was over (``scripts/quorum_election.py``). A queue that rejects
        publishes (``x-overflow: reject-publish``) nacks on any channel: the pause
        keeps its entry from making this process open a channel per nack. Unanswered
        publishes on the old channel are unconfirmed.
        """
        now = time.monotonic()
        if now - self._opened < RENEW_EVERY:
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
        self._check_thread()
        producer = self._producer
        if producer is None:
            raise RuntimeError("ConfirmStream.publish before ensure()")
        self._address = (exchange, routing_key)
        now = time.time()
        for delivery, _, _ in items:
            delivery.published_at = now
            self._tracker.published(delivery)
        try:
            with self._writes(producer):
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
