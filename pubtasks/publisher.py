"""The publisher: one kombu connection per worker process, confirms, and retries.

Each worker process keeps one long-lived ``kombu.Connection`` with
``confirm_publish`` on, so ``Producer.publish`` returns only once RabbitMQ has
answered basic.ack or basic.nack (or the confirm timeout passes). No tick opens
its own connection. Reconnecting is kombu's ``ensure_connection`` with a
bounded backoff (0, 0.25, 0.5... at most 1 s apart), so publishing resumes by
itself within about a second of RabbitMQ coming back.

Why not ``Producer.publish(retry=True)``: kombu then treats ``MessageNacked``
as a connection error, republishes without counting the nack, and finally
raises ``OperationalError('')`` with an empty message. Here every attempt is
counted, and the tick's attempts are bounded.

Channel errors (404 NOT_FOUND, 403 ACCESS_REFUSED, 406 PRECONDITION_FAILED)
mean the topology or the permissions are wrong: retrying cannot help, so the
tick fails at once with RabbitMQ's reply text. After any channel error the
channel is thrown away, because py-amqp would silently reopen it *without*
confirm mode and the next publish would wait forever for its confirm.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import amqp.exceptions
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.messaging import Producer

from pubtasks import message
from pubtasks.confirms import Delivery, Outcome, Settled, Tracker
from pubtasks.errors import (
    AccessRefused,
    PubtasksError,
    TickFailed,
    TopologyError,
    Unreachable,
)
from pubtasks.framing import Frames
from pubtasks.settings import Settings
from pubtasks.stats import Stats

log = logging.getLogger(__name__)

#: Publishes whose frames go to the socket in one write (kombu's ``Producer.batch`` size).
WRITE_BATCH = 128

#: Seconds to wait for RabbitMQ's answer to channel.close and connection.close.
CLOSE_TIMEOUT = 2.0

#: Backoff between connection attempts: kombu's interval_start, interval_step, interval_max.
RECONNECT = {"interval_start": 0.0, "interval_step": 0.25, "interval_max": 1.0}


def nack_backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after a nack: 0.1, 0.2, 0.4... at most 2."""
    return float(min(0.1 * 2 ** (attempt - 1), 2.0))


def describe(exc: BaseException) -> str:
    """One line for an AMQP or socket error, quoting RabbitMQ's reply code and text."""
    if isinstance(exc, amqp.exceptions.AMQPError):
        return f"({exc.reply_code}) {exc.reply_text}"
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class Sent:
    """What one attempt at a tick's messages came to."""

    settled: dict[str, Settled]  # message_id -> how its publish ended
    error: str | None = None  # why the attempt stopped early
    permanent: bool = False  # a channel error that retrying cannot fix


@dataclass(frozen=True)
class Result:
    """How a tick ended when it did not fail."""

    message_id: str
    message_number: int
    outcome: str  # "acked" or "returned"
    attempts: int
    confirmed_at: float  # when the last confirm of the tick was counted


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


class PublishBatch:
    """kombu's publish-batch session (``with producer.batch():``) for a py-amqp channel.

    kombu 5.7 lets a transport buffer the ``Producer.publish`` calls made inside
    ``producer.batch()``; py-amqp has no such session, so this one keeps the frames
    of up to ``max_size`` publishes (encoded by ``framing.Frames``) and writes them
    to the socket in one go. Leaving the block writes the rest; an exception
    inside it discards what was not written yet.
    """

    def __init__(self, channel: Any, frames: Frames, max_size: int) -> None:
        self.channel = channel
        self.frames = frames
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
        drop_fillers(message.properties)
        self._unwritten.append(
            self.frames.publish(
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
        try:
            connection.transport.write(data)
        except TimeoutError as exc:  # as py-amqp's basic_publish: the socket is dead
            raise amqp.exceptions.RecoverableConnectionError("basic_publish: timed out") from exc
        connection.bytes_sent += 1  # what py-amqp's heartbeat check looks at

    def discard(self) -> None:
        self._unwritten = []

    def close(self) -> None:
        self._unwritten = []


class Publisher:
    """Publishes ticks over one long-lived confirm-mode connection."""

    def __init__(self, settings: Settings, stats: Stats) -> None:
        self.settings = settings
        self.stats = stats
        self.exchange = Exchange(
            settings.exchange, type=settings.exchange_type, durable=True, auto_delete=False
        )
        self.queue = Queue(
            settings.queue,
            exchange=self.exchange,
            routing_key=settings.binding_key,
            durable=True,
            auto_delete=False,
        )
        self.connection = Connection(
            settings.amqp_url,
            connect_timeout=2,
            heartbeat=0,
            transport_options={
                "confirm_publish": True,
                # A socket RabbitMQ stopped reading (a memory alarm, a dead peer) must not
                # hang a publish: the kernel's send timeout (SO_SNDTIMEO) bounds each write.
                "write_timeout": settings.confirm_timeout,
                "client_properties": {
                    "connection_name": f"pubtasks {socket.gethostname()} pid {os.getpid()}",
                },
            },
        )
        self._channel: Any = None
        self._producer: Producer | None = None
        self._tracker = Tracker()
        self._settled: list[Settled] = []
        # Names this publisher's publishes in Redis's pending set: unique per process.
        self._publisher_id = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._sequence = itertools.count(1)

    # -- connection and channel -------------------------------------------------------

    def connect(
        self,
        timeout: float | None = None,
        max_retries: int | None = None,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> None:
        """Make sure a connection and a confirm-mode channel with the topology declared exist.

        Raises ``Unreachable`` when RabbitMQ does not answer within ``timeout`` or
        ``max_retries``, ``AccessRefused`` when it refuses the login or the vhost, and
        ``TopologyError`` when a declaration conflicts.
        """
        if self._producer is not None and self.connection.connected:
            return
        where = self.settings.amqp_url_masked

        def errback(exc: BaseException, interval: float) -> None:
            reason = describe(exc)
            if on_retry is not None:
                on_retry(reason, interval)
            else:
                log.warning("RabbitMQ at %s: %s; retrying in %.2f s", where, reason, interval)

        try:
            self.connection.ensure_connection(
                errback=errback, max_retries=max_retries, timeout=timeout, **RECONNECT
            )
        except amqp.exceptions.AccessRefused as exc:
            self._reset()
            raise AccessRefused(
                f"RabbitMQ at {where} refused the login: {describe(exc)}; "
                "check the user and password in AMQP_URL"
            ) from exc
        except (amqp.exceptions.ConnectionError, amqp.exceptions.ChannelError) as exc:
            self._reset()
            raise AccessRefused(
                f"RabbitMQ at {where} refused the connection: {describe(exc)}; "
                "check the vhost and permissions in AMQP_URL"
            ) from exc
        except (*self.connection.recoverable_connection_errors, OSError, OperationalError) as exc:
            # kombu re-raises the last recoverable error as OperationalError; name its cause.
            cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ else exc
            self._reset()
            raise Unreachable(f"RabbitMQ at {where} is unreachable: {describe(cause)}") from exc
        if self._producer is None:
            self._open_channel()

    def _open_channel(self) -> None:
        channel = self.connection.channel()
        # confirm_publish makes every channel of the connection a confirm channel, and
        # py-amqp then blocks each basic.publish until its own confirm arrives. This
        # channel streams instead: it publishes up to CONFIRM_WINDOW messages ahead and
        # settles them as the acks and nacks (with `multiple`) come back (confirms.py).
        # Publishes go through PublishBatch below; plain basic_publish, should anything
        # call it, must not wait for (and swallow) an ack the tracker is owed either.
        channel.basic_publish = channel._basic_publish
        channel.confirm_select()
        channel._confirm_selected = True
        tracker = Tracker()
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
        frames = Frames(channel.channel_id, self.connection.connection.frame_max)
        channel.create_publish_batch = lambda max_size: PublishBatch(channel, frames, max_size)
        try:
            self.declare(channel)
        except TopologyError:
            self._drop_channel()
            raise
        self._producer = Producer(
            channel, exchange=self.exchange, auto_declare=False, on_return=self._on_return
        )

    def declare(self, channel: Any) -> None:
        """Declare the exchange, the queue and their binding; a conflict names the entity."""
        s = self.settings
        steps: list[tuple[str, Callable[[], Any]]] = [
            (
                f"exchange {s.exchange!r} ({s.exchange_type}, durable)",
                self.exchange(channel).declare,
            ),
            (f"queue {s.queue!r} (durable)", self.queue(channel).queue_declare),
            (
                f"binding of queue {s.queue!r} to exchange {s.exchange!r} "
                f"with key {s.binding_key!r}",
                self.queue(channel).queue_bind,
            ),
        ]
        for entity, declare in steps:
            try:
                declare()
            except amqp.exceptions.ChannelError as exc:
                raise TopologyError(
                    f"cannot declare {entity}: RabbitMQ replied {describe(exc)}"
                ) from exc

    def _on_return(self, exc: BaseException, exchange: str, routing_key: str, msg: Any) -> None:
        # basic.return comes before the basic.ack of the same publish (RabbitMQ acks a
        # message it accepted but could not route), so mark the delivery now and count
        # it as returned when the ack settles it.
        reply = f"unroutable: {describe(exc)} (exchange {exchange!r}, routing key {routing_key!r})"
        self._tracker.returned(msg.properties.get("message_id", ""), reply)

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
        self.connection.collect()

    def close(self) -> None:
        """Close the channel and the connection, waiting at most CLOSE_TIMEOUT for each answer.

        py-amqp waits for channel.close-ok and connection.close-ok with no time limit,
        so a worker process stopping while RabbitMQ is silently unreachable would
        otherwise never exit. On timeout the socket is simply dropped.
        """
        raw = self.connection._connection  # not .connection: that would connect
        sock = getattr(getattr(raw, "transport", None), "sock", None)
        if sock is not None:
            sock.settimeout(CLOSE_TIMEOUT)
        self._drop_channel()
        self.connection.release()

    # -- publishing ---------------------------------------------------------------------

    def publish_tick(self, tick: message.Tick) -> Result:
        """Publish the tick's message(s) until RabbitMQ acks each, or fail what is left.

        Every basic.publish is counted in Redis before it is sent and settled
        exactly once afterwards. A nacked or unconfirmed message is published
        again, with the same ``message_id``, up to PUBLISH_ATTEMPTS times.
        Raises ``TickFailed``, ``TopologyError`` or ``AccessRefused`` after
        counting what was given up as failed.
        """
        s = self.settings
        deadline = tick.scheduled_at + s.tick_deadline
        todo = tick.messages()
        returned = 0
        reason = "no attempt made"
        attempt = 0
        while todo and attempt < s.publish_attempts:
            late = f"TICK_DEADLINE={s.tick_deadline:g} s passed"
            if time.time() > deadline:
                self._fail(tick, todo, f"{late} before it could be published (last: {reason})")
            try:
                self.connect(timeout=deadline - time.time())
            except Unreachable as exc:
                self._fail(tick, todo, f"{late}: {exc}", exc)
            except (AccessRefused, TopologyError) as exc:
                self._fail(tick, todo, str(exc), exc, type(exc))
            attempt += 1
            sent = self._send(tick, todo)
            returned += sum(1 for x in sent.settled.values() if x.returned)
            acked = {m for m, x in sent.settled.items() if x.outcome is Outcome.ACKED}
            todo = [out for out in todo if out.message_id not in acked]
            if not todo:
                break
            nacked = sum(1 for x in sent.settled.values() if x.outcome is Outcome.NACKED)
            reason = sent.error or (f"{nacked} nacked by RabbitMQ" if nacked else "unconfirmed")
            if tick.batch == 1 and nacked:
                reason = "nacked by RabbitMQ"
            if sent.permanent:
                self._fail(tick, todo, reason, None, TopologyError)
            log.warning(
                "tick %s attempt %d/%d: %s", tick.message_id, attempt, s.publish_attempts, reason
            )
            if nacked and attempt < s.publish_attempts:
                time.sleep(nack_backoff(attempt))
        if todo:
            self._fail(tick, todo, f"gave up after {attempt} attempts: {reason}")
        outcome = "acked" if not returned else "returned"
        return Result(tick.message_id, tick.number, outcome, attempt, time.time())

    def _send(self, tick: message.Tick, todo: list[message.Outgoing]) -> Sent:
        """Publish ``todo`` once, keeping at most CONFIRM_WINDOW unconfirmed; settle each.

        Stops early on a channel or connection error, or when the oldest publish
        has waited CONFIRM_TIMEOUT: whatever is then unanswered is unconfirmed,
        and whatever was not sent yet is simply left for the next attempt.
        """
        assert self._producer is not None
        s = self.settings
        producer, tracker = self._producer, self._tracker
        sent: dict[str, Settled] = {}
        error: str | None = None
        permanent = False
        position = 0
        # Counted in Redis as published, not sent yet: a window's worth is counted in
        # one round trip ahead of sending, so the broker is never kept waiting on Redis.
        counted: deque[tuple[message.Outgoing, Delivery]] = deque()
        try:
            while position < len(todo) or len(tracker):
                room = s.confirm_window - len(tracker)
                if room > 0 and position < len(todo):
                    if not counted:
                        counted += self._count(tick, todo[position : position + s.confirm_window])
                    batch = [counted.popleft() for _ in range(min(room, len(counted)))]
                    position += len(batch)
                    self._publish(producer, tick, batch)
                    continue
                # The window is full: write the outcomes so far while RabbitMQ works.
                self._flush(sent)
                oldest = tracker.oldest()
                assert oldest is not None
                wait = oldest.published_at + s.confirm_timeout - time.time()
                if wait <= 0:
                    raise TimeoutError
                self.connection.drain_events(timeout=wait)
        except TimeoutError:
            error = f"no confirm within CONFIRM_TIMEOUT={s.confirm_timeout:g} s"
            self._reset()  # the connection may be silently dead; a late ack must not count
        except amqp.exceptions.ChannelError as exc:
            self._drop_channel()
            permanent = isinstance(exc, amqp.exceptions.IrrecoverableChannelError)
            error = (
                f"RabbitMQ closed the channel publishing to exchange {s.exchange!r} "
                f"with routing key {tick.routing_key!r}: {describe(exc)}"
            )
        except (*self.connection.connection_errors, OSError) as exc:
            error = f"connection lost: {describe(exc)}"
            self._reset()
        finally:
            # Counted but never sent: no answer will come for them either.
            self._settled += [Settled(d, Outcome.UNCONFIRMED) for _, d in counted]
        self._flush(sent)
        return Sent(sent, error, permanent)

    def _count(
        self, tick: message.Tick, outs: list[message.Outgoing]
    ) -> list[tuple[message.Outgoing, Delivery]]:
        """Count ``outs`` as published and pending, in one Redis round trip."""
        now = time.time()
        pairs = [
            (
                out,
                Delivery(
                    key=f"{out.message_id}#{self._publisher_id}.{next(self._sequence)}",
                    message_id=out.message_id,
                    entry=tick.entry,
                    number=out.number,
                    published_at=now,
                ),
            )
            for out in outs
        ]
        self.stats.begin((d for _, d in pairs), now)
        return pairs

    def _publish(
        self,
        producer: Producer,
        tick: message.Tick,
        batch: list[tuple[message.Outgoing, Delivery]],
    ) -> None:
        """basic.publish each message through kombu's Producer; confirms come back later.

        Inside ``producer.batch()`` the frames go to the socket WRITE_BATCH messages
        at a time (``PublishBatch``). Every delivery is tracked before the first is
        handed over: if the block fails half-way, the channel is thrown away, which
        counts the whole batch as unconfirmed.
        """
        now = time.time()
        props = message.properties(batch[0][0])  # the same for the batch but the id
        for _, delivery in batch:
            delivery.published_at = now
            self._tracker.published(delivery)
        try:
            with producer.batch(max_size=WRITE_BATCH):
                for out, _ in batch:
                    props["message_id"] = out.message_id
                    producer.publish(
                        message.body(tick, out, now),
                        routing_key=tick.routing_key,
                        mandatory=True,
                        content_type=message.CONTENT_TYPE,
                        **props,
                    )
        except (*self.connection.connection_errors, OSError):
            raise  # _send resets the connection, and the channel with it
        except Exception:
            # Some of the batch never reached the socket, so the channel's delivery
            # tags no longer match the tracker's: only a new channel can be trusted.
            self._drop_channel()
            raise

    def _flush(self, into: dict[str, Settled]) -> None:
        """Count the outcomes settled since the last flush, in one Redis round trip."""
        settled, self._settled = self._settled, []
        if not settled:
            return
        now = time.time()
        self.stats.settle(settled, now)
        for x in settled:
            into[x.delivery.message_id] = x
            if x.returned:
                d = x.delivery
                self.stats.error(d.entry, d.message_id, str(d.returned), now)
                log.warning("message %s %s", d.message_id, d.returned)

    def _fail(
        self,
        tick: message.Tick,
        todo: list[message.Outgoing],
        reason: str,
        cause: BaseException | None = None,
        error: type[PubtasksError] = TickFailed,
    ) -> NoReturn:
        """Count each message in ``todo`` as failed with ``reason`` (once), and raise ``error``."""
        self.stats.fail(tick.entry, [out.message_id for out in todo], reason, time.time())
        log.error("tick %s failed: %s", tick.message_id, reason)
        raise error(f"tick {tick.message_id} failed: {reason}") from cause
