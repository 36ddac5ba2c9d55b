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

import logging
import os
import socket
import time
import uuid
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
from pubtasks.settings import Settings
from pubtasks.stats import Stats

log = logging.getLogger(__name__)

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
class Attempt:
    """How one basic.publish ended."""

    outcome: Outcome
    returned: str | None = None  # basic.return's reply: acked, but no queue took it
    error: str | None = None  # why it was not acked
    permanent: bool = False  # a channel error that retrying cannot fix


@dataclass(frozen=True)
class Result:
    """How a tick ended when it did not fail."""

    message_id: str
    message_number: int
    outcome: str  # "acked" or "returned"
    attempts: int


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
                "client_properties": {
                    "connection_name": f"pubtasks {socket.gethostname()} pid {os.getpid()}",
                },
            },
        )
        self._channel: Any = None
        self._producer: Producer | None = None
        self._tracker = Tracker()
        self._settled: list[Settled] = []

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
        self._drop_channel()
        self.connection.release()

    # -- publishing ---------------------------------------------------------------------

    def publish_tick(self, tick: message.Tick) -> Result:
        """Publish one tick until RabbitMQ acks it, or fail it with its reason.

        Every basic.publish is counted in Redis before it is sent and settled
        exactly once afterwards. Raises ``TickFailed``, ``TopologyError`` or
        ``AccessRefused`` after counting the tick as failed.
        """
        s = self.settings
        deadline = tick.scheduled_at + s.tick_deadline
        reason = "no attempt made"
        attempt = 0
        while attempt < s.publish_attempts:
            late = f"TICK_DEADLINE={s.tick_deadline:g} s passed"
            if time.time() > deadline:
                self._fail(tick, f"{late} before it could be published (last: {reason})", None)
            try:
                self.connect(timeout=deadline - time.time())
            except Unreachable as exc:
                self._fail(tick, f"{late}: {exc}", exc)
            except (AccessRefused, TopologyError) as exc:
                self._fail(tick, str(exc), exc, type(exc))
            attempt += 1
            result = self._attempt(tick)
            if result.outcome is Outcome.ACKED:
                outcome = "acked" if result.returned is None else "returned"
                return Result(tick.message_id, tick.number, outcome, attempt)
            reason = result.error or result.outcome.value
            if result.permanent:
                self._fail(tick, reason, None, TopologyError)
            log.warning(
                "tick %s attempt %d/%d: %s", tick.message_id, attempt, s.publish_attempts, reason
            )
            if result.outcome is Outcome.NACKED and attempt < s.publish_attempts:
                time.sleep(nack_backoff(attempt))
        self._fail(tick, f"gave up after {attempt} attempts: {reason}", None)

    def _attempt(self, tick: message.Tick) -> Attempt:
        """One basic.publish of ``tick``, counted in Redis before and after."""
        assert self._producer is not None
        s = self.settings
        published_at = time.time()
        delivery = Delivery(
            key=f"{tick.message_id}#{uuid.uuid4().hex[:12]}",
            message_id=tick.message_id,
            entry=tick.entry,
            number=tick.number,
        )
        self.stats.begin([delivery], published_at)
        self._tracker.published(delivery)
        error: str | None = None
        permanent = False
        try:
            self._producer.publish(
                message.body(tick, published_at),
                routing_key=tick.routing_key,
                mandatory=True,
                content_type=message.CONTENT_TYPE,
                content_encoding=message.CONTENT_ENCODING,
                confirm_timeout=s.confirm_timeout,
                **message.properties(tick, published_at),
            )
        except amqp.exceptions.MessageNacked:
            error = "nacked by RabbitMQ"  # the basic_nack listener has settled it already
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
        if not any(x.delivery is delivery for x in self._settled):
            # Returned without an answer for it: never expected with confirm_publish,
            # but a publish must not stay pending in Redis because of it.
            self._reset()
        settled, self._settled = self._settled, []
        self.stats.settle(settled, time.time())
        mine = next(x for x in settled if x.delivery is delivery)
        if mine.returned:
            self.stats.error(tick.entry, tick.message_id, str(delivery.returned), time.time())
            log.warning("tick %s %s", tick.message_id, delivery.returned)
        return Attempt(mine.outcome, delivery.returned, error, permanent)

    def _fail(
        self,
        tick: message.Tick,
        reason: str,
        cause: BaseException | None,
        error: type[PubtasksError] = TickFailed,
    ) -> NoReturn:
        """Count the tick as failed with ``reason`` (once), log it, and raise ``error``."""
        self.stats.fail(tick.entry, tick.message_id, reason, time.time())
        log.error("tick %s failed: %s", tick.message_id, reason)
        raise error(f"tick {tick.message_id} failed: {reason}") from cause
