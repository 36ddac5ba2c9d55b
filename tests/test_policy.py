"""Unit tests: the tick policy against a fake confirm stream and a fake clock (no services)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from pubtasks import message, timing
from pubtasks.confirms import Delivery, Outcome, Settled, Tracker
from pubtasks.errors import (
    AccessRefused,
    ChannelLost,
    StatsUnavailable,
    TickFailed,
    TopologyError,
    Unreachable,
)
from pubtasks.message import Outgoing, Tick
from pubtasks.policy import Limits, Result, TickPolicy
from pubtasks.tries import Later, Tries, nack_backoff, return_backoff

T0 = 1_795_000_000.0
LIMITS = Limits(attempts=3, confirm_timeout=5.0, confirm_window=4, tick_deadline=600.0)

#: How RabbitMQ answers one publish: "ack", "nack", "return" (acked, but unroutable),
#: or None (no answer at all). Given the message id and which attempt this is (1, 2...).
Answer = Callable[[str, int], str | None]


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeStream:
    """A confirm stream whose RabbitMQ answers as ``answer`` says, on the fake clock."""

    def __init__(self, clock: Clock, answer: Answer) -> None:
        self.clock = clock
        self.answer = answer
        self.blocked: str | None = None
        self.tracker = Tracker()
        self.unanswered: dict[int, Delivery] = {}
        self.out: list[Settled] = []
        self.sent: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.tries: dict[str, int] = {}
        self.most_in_flight = 0
        self.abandoned = 0
        self.renewed = 0
        self.ensure_errors: list[Exception] = []
        self.lose_after: int | None = None  # publishes after which the channel goes
        self.lose_with = ChannelLost("connection lost: ConnectionResetError: reset")

    @property
    def in_flight(self) -> int:
        return len(self.tracker)

    def ensure(self, timeout: float | None = None) -> None:
        if self.ensure_errors:
            raise self.ensure_errors.pop(0)

    def renew(self) -> None:
        self.renewed += 1

    def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[Delivery, bytes, Mapping[str, Any]]],
    ) -> None:
        for delivery, body, properties in items:
            delivery.published_at = self.clock()
            self.unanswered[self.tracker.published(delivery)] = delivery
            self.sent.append((exchange, routing_key, body, dict(properties)))
            self.tries[delivery.message_id] = self.tries.get(delivery.message_id, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.lose_after is not None and len(self.sent) >= self.lose_after:
            self.lose_after = None
            self._lose()

    def publish_many(
        self,
        groups: Sequence[tuple[str, str, Sequence[tuple[Delivery, bytes, Mapping[str, Any]]]]],
    ) -> None:
        for exchange, routing_key, items in groups:
            self.publish(exchange, routing_key, items)

    def wait(self, timeout: float) -> None:
        answered = False
        for tag, delivery in list(self.unanswered.items()):
            said = self.answer(delivery.message_id, self.tries[delivery.message_id])
            if said is None:
                continue
            if said == "return":
                self.tracker.returned(delivery.message_id, "unroutable: (312) NO_ROUTE")
            outcome = Outcome.NACKED if said == "nack" else Outcome.ACKED
            self.out += self.tracker.confirm(tag, False, outcome)
            del self.unanswered[tag]
            answered = True
        if not answered:
            self.clock.now += timeout

    def settled(self) -> list[Settled]:
        out, self.out = self.out, []
        return out

    def oldest(self) -> Delivery | None:
        return self.tracker.oldest()

    def abandon(self) -> None:
        self.abandoned += 1
        self.out += self.tracker.lose_all()
        self.unanswered.clear()

    def _lose(self) -> None:
        self.out += self.tracker.lose_all()
        self.unanswered.clear()
        raise self.lose_with


class Recorder:
    """A listener that keeps what it is told, as the accounting would count it."""

    def __init__(self) -> None:
        self.keys = itertools.count(1)
        self.published: list[str] = []
        self.outcomes: list[tuple[str, str]] = []
        self.failures: list[tuple[list[str], str]] = []
        self.settle_errors: list[Exception] = []
        self.finished: set[str] = set()  # counted acked, returned or failed

    def publishing_many(self, outs: Sequence[tuple[Tick, Outgoing]]) -> list[Delivery]:
        self.published += [out.message_id for _, out in outs]
        return [
            Delivery(
                f"{out.message_id}#{next(self.keys)}",
                out.message_id,
                tick.entry,
                out.number,
                retry_return=tick.recipe.on_return == "retry",
            )
            for tick, out in outs
        ]

    def settled(self, outcomes: Sequence[Settled]) -> None:
        if self.settle_errors:
            raise self.settle_errors.pop(0)
        for x in outcomes:
            kind = "returned" if x.returned else x.outcome.value
            self.outcomes.append((x.delivery.message_id, kind))
            bounced = x.returned and x.delivery.retry_return  # to be published again
            if x.outcome is Outcome.ACKED and not bounced:
                self.finished.add(x.delivery.message_id)

    def failed(self, tick: Tick, outs: Sequence[Outgoing], reason: str) -> None:
        self.failures.append(([out.message_id for out in outs], reason))
        self.finished.update(out.message_id for out in outs)

    def done(self, tick: Tick) -> set[str]:
        return {out.message_id for out in tick.messages()} & self.finished

    def done_many(self, ticks: Sequence[Tick]) -> list[set[str]]:
        return [self.done(t) for t in ticks]

    def count(self, kind: str) -> int:
        return sum(1 for _, k in self.outcomes if k == kind)


class Driver:
    """Publishes a tick as the publish task does: each ``Later`` is waited out (on the
    fake clock: ``slept``) and the tick published again from its tries."""

    def __init__(self, policy: TickPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self.given_back = 0

    def publish(self, t: Tick) -> Result:
        tries: Tries | None = None
        while True:
            try:
                return self.policy.publish(t, tries)
            except Later as later:
                self.given_back += 1
                self.clock.sleep(later.delay)
                tries = Tries.of(**later.tries.as_kwargs())  # through the task's kwargs


def policy(answer: Answer, limits: Limits = LIMITS) -> tuple[Driver, FakeStream, Recorder]:
    clock = Clock()
    stream, listener = FakeStream(clock, answer), Recorder()
    p = TickPolicy(stream, listener, limits, clock=clock)
    return Driver(p, clock), stream, listener


def tick(batch: int = 1) -> Tick:
    return Tick("e", T0, number=1, batch=batch)


def always(said: str | None) -> Answer:
    return lambda message_id, attempt: said


def test_an_acked_tick_is_one_attempt_reported_before_and_after() -> None:
    p, stream, listener = policy(always("ack"))
    result = p.publish(tick())
    assert (result.outcome, result.attempts, result.message_number) == ("acked", 1, 1)
    assert listener.published == ["e@1795000000000"]
    assert listener.outcomes == [("e@1795000000000", "acked")]
    [(exchange, routing_key, body, properties)] = stream.sent
    assert (exchange, routing_key) == ("message", "example.text")
    assert b'"message_number":1' in body
    assert properties["delivery_mode"] == 2


def test_a_nack_is_retried_after_a_backoff_with_the_same_message_id() -> None:
    p, stream, listener = policy(lambda message_id, attempt: "nack" if attempt == 1 else "ack")
    result = p.publish(tick())
    assert (result.outcome, result.attempts) == ("acked", 2)
    assert listener.outcomes == [("e@1795000000000", "nacked"), ("e@1795000000000", "acked")]
    assert stream.clock.slept == [nack_backoff(1)]
    assert listener.failures == []
    # Waiting out the backoff outside the process, and on a new channel
    assert (p.given_back, stream.renewed) == (1, 1)


def test_the_nack_backoff_covers_a_leader_election_before_the_fifth_attempt() -> None:
    assert [nack_backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert sum(nack_backoff(n) for n in range(1, 5)) == 7.5


def test_nacked_every_time_the_tick_fails_once_with_its_reason() -> None:
    p, _, listener = policy(always("nack"))
    with pytest.raises(TickFailed, match="gave up after 3 attempts: nacked by RabbitMQ"):
        p.publish(tick())
    assert listener.count("nacked") == 3
    assert listener.failures == [
        (["e@1795000000000"], "gave up after 3 attempts: nacked by RabbitMQ")
    ]


def test_no_answer_within_confirm_timeout_is_unconfirmed_and_the_connection_dropped() -> None:
    p, stream, listener = policy(lambda message_id, attempt: None if attempt == 1 else "ack")
    result = p.publish(tick())
    assert (result.outcome, result.attempts) == ("acked", 2)
    assert stream.abandoned == 1  # a late ack on that connection must never count
    # Having waited CONFIRM_TIMEOUT, the tick is given back (other ticks run first)
    assert (p.given_back, stream.clock.slept) == (1, [0.0])
    assert listener.outcomes == [("e@1795000000000", "unconfirmed"), ("e@1795000000000", "acked")]


def test_a_timeout_while_rabbitmq_blocks_publishing_says_so() -> None:
    p, stream, listener = policy(always(None))
    stream.blocked = "connection blocked, see broker logs"
    with pytest.raises(TickFailed) as failed:
        p.publish(tick())
    assert str(failed.value).endswith(
        "gave up after 3 attempts: no confirm within CONFIRM_TIMEOUT=5 s; "
        "RabbitMQ blocked publishing: connection blocked, see broker logs"
    )
    assert listener.count("unconfirmed") == 3


def test_a_lost_connection_leaves_the_window_unconfirmed_and_the_rest_is_retried() -> None:
    # Given a tick of 10 through a window of 4, and the connection lost after 6 publishes
    p, stream, listener = policy(always("ack"))
    stream.lose_after = 6
    result = p.publish(tick(batch=10))
    # Then what was in flight is unconfirmed, and every message ends acked, once
    assert result.attempts == 2
    assert stream.most_in_flight <= LIMITS.confirm_window
    acked = [m for m, kind in listener.outcomes if kind == "acked"]
    assert sorted(acked) == sorted(f"e@1795000000000.{i}" for i in range(10))
    assert listener.count("unconfirmed") == len(listener.published) - 10
    assert listener.failures == []


def test_a_channel_closed_for_good_fails_the_tick_at_once() -> None:
    p, stream, listener = policy(always("ack"))
    stream.lose_after = 1
    stream.lose_with = ChannelLost("RabbitMQ closed the channel: (404) NOT_FOUND", permanent=True)
    with pytest.raises(TopologyError, match=r"\(404\) NOT_FOUND"):
        p.publish(tick())
    assert listener.outcomes == [("e@1795000000000", "unconfirmed")]
    assert [ids for ids, _ in listener.failures] == [["e@1795000000000"]]


@pytest.mark.parametrize(
    ("error", "raised", "reason"),
    [
        (AccessRefused("refused the login"), AccessRefused, "refused the login"),
        (TopologyError("cannot declare exchange 'message'"), TopologyError, "cannot declare"),
    ],
)
def test_what_retrying_cannot_fix_fails_the_tick_before_publishing(
    error: Exception, raised: type[Exception], reason: str
) -> None:
    p, stream, listener = policy(always("ack"))
    stream.ensure_errors = [error]
    with pytest.raises(raised):
        p.publish(tick())
    assert listener.published == []
    [(ids, said)] = listener.failures
    assert ids == ["e@1795000000000"] and said.startswith(reason)


def test_an_unreachable_rabbitmq_gives_the_tick_back_to_wait_without_using_an_attempt() -> None:
    p, stream, listener = policy(always("ack"))
    stream.ensure_errors = [Unreachable("RabbitMQ is unreachable")] * 3
    result = p.publish(tick())
    assert (result.outcome, result.attempts, p.given_back) == ("acked", 1, 3)
    assert stream.clock.slept == [timing.UNREACHABLE_DELAY] * 3
    assert listener.failures == []


def test_rabbitmq_unreachable_until_the_deadline_fails_the_tick_with_the_reason() -> None:
    p, stream, listener = policy(always("ack"))
    stream.ensure_errors = [Unreachable("RabbitMQ at x is unreachable")] * 10_000
    with pytest.raises(TickFailed):
        p.publish(tick())
    assert listener.published == []
    [(ids, said)] = listener.failures
    assert ids == ["e@1795000000000"]
    assert said == "TICK_DEADLINE=600 s passed: RabbitMQ at x is unreachable"
    assert stream.clock.now <= T0 + LIMITS.tick_deadline


def test_a_connection_lost_while_opening_the_channel_costs_one_attempt() -> None:
    p, stream, _ = policy(always("ack"))
    stream.ensure_errors = [ChannelLost("connection lost opening the channel: reset")]
    assert p.publish(tick()).attempts == 2


def test_a_tick_past_its_deadline_is_not_published() -> None:
    p, stream, listener = policy(always("ack"))
    late = Tick("e", T0 - 601, number=1)
    with pytest.raises(TickFailed, match="TICK_DEADLINE=600 s passed before it could be published"):
        p.publish(late)
    assert stream.sent == [] and listener.published == []


def test_a_returned_message_with_on_return_count_ends_returned() -> None:
    p, _, listener = policy(always("return"))
    counted = Tick("e", T0, number=1, recipe=message.Recipe(on_return="count"))
    assert p.publish(counted).outcome == "returned"
    assert listener.outcomes == [("e@1795000000000", "returned")]


def test_a_returned_message_is_published_again_until_a_queue_takes_it() -> None:
    # Given RabbitMQ returning the message 5 times (more than PUBLISH_ATTEMPTS), then not
    p, stream, listener = policy(lambda message_id, attempt: "return" if attempt <= 5 else "ack")
    result = p.publish(tick())
    # Then it was published 6 times, backing off, with the same message_id, and is acked
    assert result.outcome == "acked" and stream.tries == {"e@1795000000000": 6}
    assert stream.clock.slept == [return_backoff(n) for n in range(1, 6)]
    assert listener.count("returned") == 5 and listener.count("acked") == 1
    assert listener.failures == []


def test_a_message_returned_until_tick_deadline_fails_with_the_return_as_reason() -> None:
    p, stream, listener = policy(always("return"))
    with pytest.raises(TickFailed, match=r"TICK_DEADLINE=600 s passed .*\(312\) NO_ROUTE"):
        p.publish(tick())
    # Every publish was counted returned, backing off at most 2 s, until the deadline
    assert stream.tries["e@1795000000000"] > 290
    assert max(stream.clock.slept) == 2.0 and stream.clock.now <= T0 + 602
    [(ids, reason)] = listener.failures
    assert ids == ["e@1795000000000"] and "NO_ROUTE" in reason


def test_outcomes_the_listener_could_not_take_are_reported_again() -> None:
    # Given Redis failing as the first outcomes are written
    p, _, listener = policy(always("ack"))
    listener.settle_errors = [StatsUnavailable("Redis is down")]
    with pytest.raises(StatsUnavailable):
        p.publish(tick())
    # Then the next tick reports them along with its own
    p.publish(Tick("e", T0 + 1, number=2))
    assert listener.outcomes == [("e@1795000000000", "acked"), ("e@1795000001000", "acked")]


def test_an_unexpected_error_fails_the_tick_and_leaves_nothing_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a tick of 10 whose 6th body cannot be built, by a bug
    p, stream, listener = policy(always("ack"))
    real = message.body

    def body(t: Tick, out: Outgoing, published_at: float) -> bytes:
        if out.index == 5:
            raise RuntimeError("a bug")
        return real(t, out, published_at)

    monkeypatch.setattr(message, "body", body)
    with pytest.raises(TickFailed, match="unexpected error: RuntimeError: a bug"):
        p.publish(tick(batch=10))
    monkeypatch.setattr(message, "body", real)
    p.publish(Tick("e", T0 + 1, number=11))
    # Then every message reported as published was settled: none stays pending. The
    # first window of 4 went out and was acked; the second, reported with the bad
    # body, was never sent: unconfirmed. The 6 not acked failed, with the bug's words.
    assert len(listener.outcomes) == len(listener.published) == 9
    assert listener.count("unconfirmed") == 4
    [(failed, reason)] = listener.failures
    assert failed == [f"e@1795000000000.{i}" for i in range(4, 10)]
    assert reason == "unexpected error: RuntimeError: a bug"
    assert stream.abandoned == 1


def test_a_payload_that_raises_fails_the_tick_with_nothing_published() -> None:
    def payload(**_: Any) -> None:
        raise ValueError("no data yet")

    p, stream, listener = policy(always("ack"))
    recipe = message.Recipe(payload=payload, payload_name="m:snapshot")
    with pytest.raises(TickFailed, match="payload m:snapshot raised ValueError: no data yet"):
        p.publish(Tick("snap", T0, 1, recipe=recipe))
    assert stream.sent == [] and listener.published == []
    assert listener.failures == [
        (["snap@1795000000000"], "payload m:snapshot raised ValueError: no data yet")
    ]


def test_a_payload_is_called_once_per_tick_however_many_attempts() -> None:
    calls: list[int] = []

    def payload(message_number: int, **_: Any) -> dict[str, int]:
        calls.append(message_number)
        return {"n": len(calls)}

    p, stream, _ = policy(lambda message_id, attempt: "nack" if attempt == 1 else "ack")
    recipe = message.Recipe(payload=payload, payload_name="m:count")
    result = p.publish(Tick("snap", T0, 7, recipe=recipe))
    assert result.attempts == 2 and calls == [7]
    assert [body for _, _, body, _ in stream.sent] == [b'{"n": 1}', b'{"n": 1}']
    headers = [props["application_headers"] for _, _, _, props in stream.sent]
    assert headers == [{"x-message-number": 7, "x-scheduled-at": T0}] * 2


def test_a_redelivered_tick_that_was_confirmed_publishes_and_counts_nothing() -> None:
    # Given a tick published and acked (its worker then died before Celery's ack)
    p, stream, listener = policy(always("ack"))
    p.publish(tick())
    sent, counted = len(stream.sent), list(listener.outcomes)
    # When Celery delivers the same tick again
    result = p.publish(tick())
    # Then nothing is published, and nothing reaches the counters
    assert (len(stream.sent), listener.outcomes) == (sent, counted)
    assert (result.outcome, result.attempts) == ("done before", 0)


def test_a_redelivered_batch_publishes_only_what_was_not_done() -> None:
    # Given a batch of 4 whose messages 0 and 2 were acked, and 3 failed, before a crash
    p, stream, listener = policy(always("ack"))
    listener.finished = {"e@1795000000000.0", "e@1795000000000.2", "e@1795000000000.3"}
    # When it is delivered again, only message 1 goes out
    p.publish(tick(batch=4))
    assert [props["message_id"] for *_, props in stream.sent] == ["e@1795000000000.1"]
    assert listener.outcomes == [("e@1795000000000.1", "acked")]


def test_a_tick_given_back_past_its_deadline_fails_before_its_payload_runs() -> None:
    calls: list[int] = []

    def payload(message_number: int, **_: Any) -> dict[str, int]:
        calls.append(message_number)
        return {"n": 1}

    p, stream, listener = policy(always("ack"))
    stream.clock.now = T0 + LIMITS.tick_deadline + 1  # woken (parked) after its deadline
    recipe = message.Recipe(payload=payload, payload_name="m:slow")
    with pytest.raises(TickFailed, match=r"TICK_DEADLINE=600 s passed .*\(last: nacked\)"):
        p.policy.publish(Tick("snap", T0, 7, recipe=recipe), Tries(attempt=2, reason="nacked"))
    assert calls == [] and stream.sent == []
    assert listener.failures == [
        (["snap@1795000000000"], "TICK_DEADLINE=600 s passed before it could be published "
         "(last: nacked)")
    ]  # fmt: skip
