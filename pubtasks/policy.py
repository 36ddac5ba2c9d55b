"""The tick policy: how hard to try a tick, and when to give up and say why.

A tick is tried up to ``PUBLISH_ATTEMPTS`` times. Each attempt streams the
tick's unacked messages through a confirm window: at most ``CONFIRM_WINDOW``
await their answer at once, and the oldest may wait ``CONFIRM_TIMEOUT``. A
nacked or unconfirmed message is published again, with the same
``message_id``, after a backoff when RabbitMQ nacked (``nack_backoff``: 0.5 s
doubling to 4 s, 7.5 s in all before the fifth attempt, which covers a quorum queue's
leader election), on a new channel. A message RabbitMQ returned (no
queue took it) is published again, backing off up to 2 s, until
``TICK_DEADLINE``, when its entry's ``on_return`` is ``"retry"`` (the default);
with ``"count"`` it is counted returned and the tick ends. What is still
unacked after the last attempt, or when ``TICK_DEADLINE`` has passed, or at
once on a permanent error (a refused login, a conflicting declaration, a
channel RabbitMQ closed for good), fails, with its reason.

**The policy never sleeps.** Where a tick must wait before its next attempt (a
backoff after a nack or a return, RabbitMQ unreachable, a confirm timeout), it
raises ``Later`` with the delay and how far the tick got (``Tries``), and the
caller gives the tick back to wait outside the process (``tasks``: a Celery
retry with a countdown, or parked in its entry's lane, ``lanes``). The next
``publish`` of the same tick goes on from those ``Tries``. So a sick entry
never holds a worker process that another entry's tick needs.

The policy speaks to RabbitMQ only through a ``Stream`` (``stream.ConfirmStream``)
and reports every step to a ``Listener`` (``accounting.Accounting`` writes them to
Redis), so it runs against fakes of both in the unit tests.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Protocol

from pubtasks import message, timing
from pubtasks.confirms import Delivery, Outcome, Settled
from pubtasks.errors import (
    AccessRefused,
    BodyError,
    ChannelLost,
    PubtasksError,
    TickFailed,
    TopologyError,
    Unreachable,
)
from pubtasks.settings import Settings
from pubtasks.tries import Later, Tries, nack_backoff, return_backoff

log = logging.getLogger(__name__)


class Stream(Protocol):
    """A confirm-mode channel, as the policy sees it (``stream.ConfirmStream``)."""

    @property
    def blocked(self) -> str | None: ...

    @property
    def in_flight(self) -> int: ...

    def ensure(self, timeout: float | None = None) -> None: ...

    def renew(self) -> None: ...

    def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[Delivery, bytes, Mapping[str, Any]]],
    ) -> None: ...

    def publish_many(
        self,
        groups: Sequence[tuple[str, str, Sequence[tuple[Delivery, bytes, Mapping[str, Any]]]]],
    ) -> None: ...

    def wait(self, timeout: float) -> None: ...

    def settled(self) -> list[Settled]: ...

    def oldest(self) -> Delivery | None: ...

    def abandon(self) -> None: ...


class Listener(Protocol):
    """Told of every publish and outcome (``accounting.Accounting``)."""

    def publishing_many(
        self, outs: Sequence[tuple[message.Tick, message.Outgoing]]
    ) -> list[Delivery]: ...

    def settled(self, outcomes: Sequence[Settled]) -> None: ...

    def failed(self, tick: message.Tick, outs: Sequence[message.Outgoing], reason: str) -> None: ...

    def done(self, tick: message.Tick) -> set[str]: ...


@dataclass(frozen=True)
class Limits:
    """The settings the policy follows."""

    attempts: int
    confirm_timeout: float
    confirm_window: int
    tick_deadline: float

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(s.publish_attempts, s.confirm_timeout, s.confirm_window, s.tick_deadline)


@dataclass(frozen=True)
class Result:
    """How a tick ended when it did not fail."""

    message_id: str
    message_number: int
    outcome: str  # "acked", "returned", or "done before" (a redelivery: nothing to do)
    attempts: int
    confirmed_at: float  # when the last confirm of the tick was counted


@dataclass(frozen=True)
class Attempt:
    """What one attempt at a tick's messages came to."""

    settled: dict[str, Settled]  # message_id -> how its publish ended
    error: str | None = None  # why the attempt stopped early
    permanent: bool = False  # a channel error that retrying cannot fix
    timed_out: bool = False  # the oldest publish waited CONFIRM_TIMEOUT for its answer
    # message_ids whose publish went out and was still unanswered after CONFIRM_TIMEOUT
    # (timed_out): in a group, only these ticks met the timeout themselves
    waited: frozenset[str] = frozenset()


class TickPolicy:
    """Publishes ticks through a stream, reporting each step to a listener."""

    def __init__(
        self,
        stream: Stream,
        listener: Listener,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self.listener = listener
        self.limits = limits
        self.clock = clock
        self._unreported: list[Settled] = []
        self._outcomes: dict[str, Settled] = {}  # of the tick being published, by message_id
        self._tracebacks: set[str] = set()  # unexpected errors logged with a traceback

    def publish(self, tick: message.Tick, tries: Tries | None = None) -> Result:
        """Publish the tick's message(s) until RabbitMQ acks each, or fail what is left.

        ``tries``: how far an earlier call got with this tick (``Later.tries``). Raises
        ``Later`` when the tick must wait before its next attempt.

        A message counted acked, returned or failed before (the tick is a redelivery:
        its worker died before Celery's ack) is neither published nor counted again.
        Every basic.publish is reported before it is sent and settled exactly once
        afterwards. Raises ``TickFailed``, ``TopologyError`` or ``AccessRefused``
        after reporting what was given up as failed.

        A body of the entry's own is made once, before the first attempt: a payload
        function that raises, or returns what cannot be encoded, fails the tick with
        nothing published. Any other exception (a bug, ours or a library's) also
        ends the tick as failed, with its reason, after what was in flight is
        settled as unconfirmed: no publish is left pending without an outcome.
        """
        done = self.listener.done(tick)
        todo = [out for out in tick.messages() if out.message_id not in done]
        self._outcomes = {}
        if not todo:
            log.info("tick %s was confirmed or failed before: not published again", tick.message_id)
            return Result(tick.message_id, tick.number, "done before", 0, self.clock())
        tries = tries or Tries()
        if self.clock() > tick.scheduled_at + self.limits.tick_deadline:
            # Given back or parked past its deadline: fail it before making any body
            late = f"TICK_DEADLINE={self.limits.tick_deadline:g} s passed"
            self._fail(tick, todo, f"{late} before it could be published (last: {tries.reason})")
        try:
            bodies = self._bodies(tick, todo, tries.bodies)
        except BodyError as exc:
            self._fail(tick, todo, str(exc), exc)
        try:
            return self._publish(tick, todo, bodies, replace(tries, bodies=bodies))
        except (PubtasksError, Later):
            raise
        except Exception as exc:
            self._contain(tick, todo, exc)

    def _bodies(
        self,
        tick: message.Tick,
        todo: list[message.Outgoing],
        made: Mapping[str, message.Body],
    ) -> dict[str, message.Body]:
        """The payload's body of each message, by message_id (none without a payload);
        those ``made`` by an earlier attempt are not made again."""
        recipe = tick.recipe
        if recipe.payload is None:
            return {}
        return {
            out.message_id: made.get(out.message_id)
            or recipe.make(tick.entry, tick.scheduled_at, out)
            for out in todo
        }

    def _contain(
        self, tick: message.Tick, todo: list[message.Outgoing], exc: Exception
    ) -> NoReturn:
        """Fail a tick that an unexpected exception broke off, with that as its reason.

        Its traceback is logged the first time only, so a bug that strikes every tick
        is one traceback and then one line per tick.
        """
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
        first = reason not in self._tracebacks
        self._tracebacks.add(reason)
        log.error("tick %s: %s", tick.message_id, reason, exc_info=exc if first else None)
        self.stream.abandon()  # what it had in flight can no longer be matched to answers
        self._report({})
        acked = {m for m, x in self._outcomes.items() if x.outcome is Outcome.ACKED}
        self._fail(tick, [out for out in todo if out.message_id not in acked], reason, exc)

    def _publish(
        self,
        tick: message.Tick,
        todo: list[message.Outgoing],
        bodies: dict[str, message.Body],
        tries: Tries,
    ) -> Result:
        limits = self.limits
        deadline = tick.scheduled_at + limits.tick_deadline
        late = f"TICK_DEADLINE={limits.tick_deadline:g} s passed"
        returned = 0
        attempt, bounces, reason = tries.attempt, tries.bounces, tries.reason
        while todo and attempt < limits.attempts:
            if self.clock() > deadline:
                self._fail(tick, todo, f"{late} before it could be published (last: {reason})")
            lost = self._connect(tick, todo, tries.at(attempt, bounces, reason), deadline)
            attempt += 1
            if lost is not None:
                reason = lost
                self._warn(tick, attempt, reason)
                continue
            sent = self._attempt(tick, todo, bodies)
            bounced = [x for x in sent.settled.values() if x.returned and x.delivery.retry_return]
            returned += sum(1 for x in sent.settled.values() if x.returned) - len(bounced)
            acked = {m for m, x in sent.settled.items() if x.outcome is Outcome.ACKED}
            acked -= {x.delivery.message_id for x in bounced}
            todo = [out for out in todo if out.message_id not in acked]
            if not todo:
                break
            nacked = sum(1 for x in sent.settled.values() if x.outcome is Outcome.NACKED)
            if bounced and len(bounced) == len(todo) and sent.error is None:
                # Only returns are left: they do not use up PUBLISH_ATTEMPTS.
                self._bounce(tick, todo, bounced, tries.at(attempt - 1, bounces + 1), deadline)
            reason = sent.error or (f"{nacked} nacked by RabbitMQ" if nacked else "unconfirmed")
            if tick.batch == 1 and nacked:
                reason = "nacked by RabbitMQ"
            if sent.permanent:
                self._fail(tick, todo, reason, None, TopologyError)
            self._warn(tick, attempt, reason)
            if attempt >= limits.attempts:
                break
            if nacked:
                # RabbitMQ could not take it (a quorum queue electing a leader, a full
                # queue that rejects publishes): wait, given back, and use a new channel,
                # whose state of the queues is RabbitMQ's current one.
                self.stream.renew()
                raise Later(nack_backoff(attempt), tries.at(attempt, bounces, reason))
            if sent.timed_out:
                # The process has waited CONFIRM_TIMEOUT already: let other ticks run.
                raise Later(0.0, tries.at(attempt, bounces, reason))
        if todo:
            self._fail(tick, todo, f"gave up after {attempt} attempts: {reason}")
        outcome = "acked" if not returned else "returned"
        return Result(tick.message_id, tick.number, outcome, attempt, self.clock())

    def _connect(
        self, tick: message.Tick, todo: list[message.Outgoing], tries: Tries, deadline: float
    ) -> str | None:
        """Make sure the stream can publish, spending at most timing.CONNECT_BUDGET on it; the
        reason when the connection went as the channel opened (an attempt lost).

        Unreachable: the tick is given back to wait (``Later``), or fails once waiting
        would take it past TICK_DEADLINE. A refused login or declaration fails it.
        """
        try:
            self.stream.ensure(timeout=min(deadline - self.clock(), timing.CONNECT_BUDGET))
        except Unreachable as exc:
            if self.clock() + timing.UNREACHABLE_DELAY > deadline:
                late = f"TICK_DEADLINE={self.limits.tick_deadline:g} s passed"
                self._fail(tick, todo, f"{late}: {exc}", exc)
            raise Later(
                timing.UNREACHABLE_DELAY, tries.at(tries.attempt, tries.bounces, str(exc))
            ) from None
        except (AccessRefused, TopologyError) as exc:
            self._fail(tick, todo, str(exc), exc, type(exc))
        except ChannelLost as exc:
            return exc.reason
        return None

    def _bounce(
        self,
        tick: message.Tick,
        todo: list[message.Outgoing],
        bounced: list[Settled],
        tries: Tries,
        deadline: float,
    ) -> NoReturn:
        """Give returned messages (no queue took them) back to wait before they are
        published again, backing off, until TICK_DEADLINE, when they fail; the return is
        the reason."""
        reason = str(bounced[-1].delivery.returned)
        if tries.bounces == 1:
            log.warning(
                "tick %s: %d message(s) returned by RabbitMQ (%s); publishing them again "
                "until TICK_DEADLINE (on_return='retry')",
                tick.message_id,
                len(bounced),
                reason,
            )
        left = deadline - self.clock()
        if left <= 0:
            late = f"TICK_DEADLINE={self.limits.tick_deadline:g} s passed"
            self._fail(tick, todo, f"{late} before a queue took it (last: {reason})")
        wait = min(return_backoff(tries.bounces), left)
        raise Later(wait, tries.at(tries.attempt, tries.bounces, reason))

    def _attempt(
        self,
        tick: message.Tick,
        todo: list[message.Outgoing],
        bodies: dict[str, message.Body],
    ) -> Attempt:
        """Publish ``todo`` once, keeping at most CONFIRM_WINDOW unanswered; settle each.

        Stops early when the stream is lost, or when the oldest publish has waited
        CONFIRM_TIMEOUT: whatever is then unanswered is unconfirmed, and whatever
        was not sent yet is left for the next attempt.
        """
        return self._stream_out([(tick, out) for out in todo], bodies)

    def _stream_out(
        self,
        todo: Sequence[tuple[message.Tick, message.Outgoing]],
        bodies: Mapping[str, message.Body],
    ) -> Attempt:
        """``_attempt`` for the messages of one tick or of several (``group``)."""
        stream, limits = self.stream, self.limits
        sent: dict[str, Settled] = {}
        error: str | None = None
        permanent = timed_out = False
        position = 0
        # Reported as published but not sent yet: a window's worth is reported in one go
        # ahead of sending, so the broker is never kept waiting on the listener.
        reported: deque[tuple[message.Tick, message.Outgoing, Delivery]] = deque()
        out: list[Delivery] = []  # handed to RabbitMQ
        waited: frozenset[str] = frozenset()
        try:
            while position < len(todo) or stream.in_flight:
                room = limits.confirm_window - stream.in_flight
                if room > 0 and position < len(todo):
                    if not reported:
                        outs = todo[position : position + limits.confirm_window]
                        deliveries = self.listener.publishing_many(outs)
                        reported += ((t, o, d) for (t, o), d in zip(outs, deliveries, strict=True))
                    batch = list(itertools.islice(reported, min(room, len(reported))))
                    groups = self._build(batch, bodies)  # should it fail, all is reported
                    for _ in batch:
                        reported.popleft()
                    position += len(batch)
                    out += (d for _, _, d in batch)
                    self.stream.publish_many(groups)
                    continue
                # The window is full, or all is sent: report outcomes while RabbitMQ works.
                self._report(sent)
                oldest = stream.oldest()
                assert oldest is not None
                wait = oldest.published_at + limits.confirm_timeout - self.clock()
                if wait <= 0:
                    error, timed_out = self._timed_out(), True
                    since = self.clock() - limits.confirm_timeout
                    waited = frozenset(  # ``sent`` holds what was answered, reported above
                        d.message_id
                        for d in out
                        if d.published_at <= since and d.message_id not in sent
                    )
                    stream.abandon()  # it may be silently dead; a late ack must not count
                    break
                stream.wait(wait)
        except ChannelLost as exc:
            error, permanent = exc.reason, exc.permanent
        finally:
            # Reported but never sent: no answer will come for them either.
            self._unreported += [Settled(d, Outcome.UNCONFIRMED) for _, _, d in reported]
        self._report(sent)
        return Attempt(sent, error, permanent, timed_out, waited)

    def _build(
        self,
        batch: list[tuple[message.Tick, message.Outgoing, Delivery]],
        bodies: Mapping[str, message.Body],
    ) -> list[tuple[str, str, list[tuple[Delivery, bytes, dict[str, Any]]]]]:
        """Each delivery with its body and properties, as of now (the publish time), in
        runs of the same exchange and routing key."""
        now = self.clock()
        groups: list[tuple[str, str, list[tuple[Delivery, bytes, dict[str, Any]]]]] = []
        for tick, out, delivery in batch:
            own = bodies.get(out.message_id, tick.recipe.body)  # None: the default body
            data = message.body(tick, out, now) if own is None else own.data
            item = (delivery, data, message.properties(tick, out, now, own))
            if groups and groups[-1][:2] == (tick.exchange, tick.routing_key):
                groups[-1][2].append(item)
            else:
                groups.append((tick.exchange, tick.routing_key, [item]))
        return groups

    def _timed_out(self) -> str:
        error = f"no confirm within CONFIRM_TIMEOUT={self.limits.confirm_timeout:g} s"
        blocked = self.stream.blocked
        return error if blocked is None else f"{error}; RabbitMQ blocked publishing: {blocked}"

    def _report(self, into: dict[str, Settled]) -> None:
        """Report the outcomes settled since the last report."""
        settled = self._unreported + self.stream.settled()
        self._unreported = []
        if not settled:
            return
        try:
            self.listener.settled(settled)
        except Exception:
            # Reported again with the next report: the listener counts each outcome once.
            self._unreported = settled + self._unreported
            raise
        for x in settled:
            into[x.delivery.message_id] = self._outcomes[x.delivery.message_id] = x

    def _warn(self, tick: message.Tick, attempt: int, reason: str) -> None:
        log.warning(
            "tick %s attempt %d/%d: %s", tick.message_id, attempt, self.limits.attempts, reason
        )

    def _fail(
        self,
        tick: message.Tick,
        todo: list[message.Outgoing],
        reason: str,
        cause: BaseException | None = None,
        error: type[PubtasksError] = TickFailed,
    ) -> NoReturn:
        """Report each message in ``todo`` as failed with ``reason``, and raise ``error``."""
        self.listener.failed(tick, todo, reason)
        log.error("tick %s failed: %s", tick.message_id, reason)
        raise error(f"tick {tick.message_id} failed: {reason}") from cause
