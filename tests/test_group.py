"""Unit tests: a group of ticks (a burst) through one confirm window, against the fake
confirm stream and clock of the tick policy's tests (no services)."""

from __future__ import annotations

import pytest

from pubtasks import timing
from pubtasks.errors import AccessRefused, ChannelLost, Unreachable
from pubtasks.group import GroupPolicy
from pubtasks.message import Recipe, Tick
from pubtasks.policy import Limits
from pubtasks.tries import Later, Tries, nack_backoff, return_backoff
from tests.test_policy import LIMITS, T0, Answer, Clock, FakeStream, Recorder


def group(answer: Answer, limits: Limits = LIMITS) -> tuple[GroupPolicy, FakeStream, Recorder]:
    clock = Clock()
    stream, listener = FakeStream(clock, answer), Recorder()
    return GroupPolicy(stream, listener, limits, clock=clock), stream, listener


def ticks(n: int, **recipe: str) -> list[Tick]:
    return [
        Tick(f"e{i}", T0, number=i + 1, recipe=Recipe(**recipe) if recipe else Recipe())
        for i in range(n)
    ]


def test_a_group_goes_out_through_one_window_and_each_tick_ends() -> None:
    policy, stream, listener = group(lambda m, n: "ack")
    ended = policy.publish_group(ticks(10))
    assert [r.outcome for r in ended.results] == ["acked"] * 10
    assert not ended.failed and not ended.alone
    assert len(stream.sent) == 10 and stream.most_in_flight <= LIMITS.confirm_window
    assert listener.count("acked") == 10 and len(listener.published) == 10


def test_a_returned_tick_leaves_the_group_to_be_published_again_alone() -> None:
    policy, _, listener = group(lambda m, n: "return" if m.startswith("e3@") else "ack")
    ended = policy.publish_group(ticks(5))
    assert [r.message_id.split("@")[0] for r in ended.results] == ["e0", "e1", "e2", "e4"]
    ((tick, later),) = ended.alone
    assert tick.entry == "e3"
    assert later.delay == return_backoff(1)
    assert (later.tries.attempt, later.tries.bounces) == (0, 1)
    assert "NO_ROUTE" in later.tries.reason
    # counted returned, not acked: it is published again, alone
    assert listener.count("returned") == 1 and listener.count("acked") == 4


def test_a_returned_tick_counted_as_returned_ends_in_the_group() -> None:
    policy, _, _ = group(lambda m, n: "return")
    ended = policy.publish_group(ticks(2, on_return="count"))
    assert [r.outcome for r in ended.results] == ["returned", "returned"]
    assert not ended.alone


def test_a_nacked_tick_goes_on_alone_after_the_nack_backoff_on_a_new_channel() -> None:
    policy, stream, _ = group(lambda m, n: "nack" if m.startswith(("e1@", "e2@")) else "ack")
    ended = policy.publish_group(ticks(4))
    assert len(ended.results) == 2
    assert [(t.entry, later.delay) for t, later in ended.alone] == [
        ("e1", nack_backoff(1)),
        ("e2", nack_backoff(1)),
    ]
    assert all(later.tries.attempt == 1 for _, later in ended.alone)
    assert all(later.tries.reason == "nacked by RabbitMQ" for _, later in ended.alone)
    assert stream.renewed == 1  # one new channel for the group, not one per nack


def test_a_tick_alone_goes_on_from_the_group_s_attempt() -> None:
    policy, stream, _ = group(lambda m, n: "ack" if n > 1 or not m.startswith("e0@") else None)
    ended = policy.publish_group(ticks(2))
    ((tick, later),) = ended.alone
    assert later.delay == 0.0  # unconfirmed: the confirm timeout was waited already
    assert "CONFIRM_TIMEOUT" in later.tries.reason
    # alone, it is the tick policy's second attempt, with the same message id
    result = policy.publish(tick, Tries.of(**later.tries.as_kwargs()))
    assert (result.outcome, result.attempts) == ("acked", 2)
    assert stream.tries[tick.message_id] == 2


def test_a_channel_lost_half_way_sends_the_unfinished_ticks_on_alone() -> None:
    policy, stream, listener = group(lambda m, n: "ack")
    stream.lose_after = 3
    stream.lose_with = ChannelLost("RabbitMQ closed the channel: (404) NOT_FOUND", permanent=True)
    ended = policy.publish_group(ticks(6))
    assert ended.results == []  # the answers were lost with the channel
    assert len(ended.alone) == 6
    assert {later.tries.reason for _, later in ended.alone} == {
        "RabbitMQ closed the channel: (404) NOT_FOUND"
    }
    # not charged: one entry's publish may have closed the channel for all
    assert all(later.delay == 0.0 and later.tries.attempt == 0 for _, later in ended.alone)
    assert not ended.failed  # alone, only the tick whose publish closed it fails
    # the first window's four were published, then lost: counted unconfirmed, not acked
    assert listener.count("unconfirmed") == len(listener.published) == LIMITS.confirm_window


def test_unreachable_the_whole_group_waits_and_the_late_ones_fail() -> None:
    policy, stream, listener = group(lambda m, n: "ack")
    stream.ensure_errors = [Unreachable("RabbitMQ at localhost:5672 is unreachable")]
    group_ticks = ticks(3)
    late = Tick("late", T0 - LIMITS.tick_deadline + timing.UNREACHABLE_DELAY / 2, number=9)
    with pytest.raises(Later) as got:
        policy.publish_group([*group_ticks, late])
    assert got.value.delay == timing.UNREACHABLE_DELAY
    ((failed, reason),) = listener.failures
    assert failed == [late.message_id] and "TICK_DEADLINE" in reason
    assert stream.sent == []


def test_a_refused_login_fails_every_tick_with_its_reason() -> None:
    policy, stream, listener = group(lambda m, n: "ack")
    stream.ensure_errors = [AccessRefused("RabbitMQ refused the login of user 'guest'")]
    ended = policy.publish_group(ticks(3))
    assert [reason for _, reason in ended.failed] == [
        "RabbitMQ refused the login of user 'guest'"
    ] * 3
    assert len(listener.failures) == 3 and stream.sent == []


def test_a_redelivered_group_publishes_only_what_is_not_done() -> None:
    policy, stream, listener = group(lambda m, n: "ack")
    group_ticks = ticks(4)
    listener.finished |= {group_ticks[0].message_id, group_ticks[2].message_id}
    ended = policy.publish_group(group_ticks)
    assert sorted(r.outcome for r in ended.results) == [
        "acked",
        "acked",
        "done before",
        "done before",
    ]
    assert len(stream.sent) == 2


def test_a_tick_past_its_deadline_fails_unpublished_and_a_payload_tick_goes_alone() -> None:
    policy, stream, _ = group(lambda m, n: "ack")
    old = Tick("old", T0 - LIMITS.tick_deadline - 1, number=1)
    made = Tick("made", T0, number=2, recipe=Recipe(payload=lambda **_: {"made": True}))
    ended = policy.publish_group([old, made, *ticks(1)])
    assert [(t.entry, "TICK_DEADLINE" in reason) for t, reason in ended.failed] == [("old", True)]
    assert [(t.entry, later.tries) for t, later in ended.alone] == [("made", Tries())]
    assert [r.outcome for r in ended.results] == ["acked"]
    assert len(stream.sent) == 1


def test_with_one_attempt_a_tick_not_acked_fails_in_the_group() -> None:
    limits = Limits(attempts=1, confirm_timeout=5.0, confirm_window=4, tick_deadline=600.0)
    policy, _, listener = group(lambda m, n: "nack" if m.startswith("e1@") else "ack", limits)
    ended = policy.publish_group(ticks(2))
    assert [(t.entry, reason) for t, reason in ended.failed] == [
        ("e1", "gave up after 1 attempts: nacked by RabbitMQ")
    ]
    assert len(listener.failures) == 1


def test_with_one_attempt_a_channel_lost_under_the_group_fails_no_tick() -> None:
    limits = Limits(attempts=1, confirm_timeout=5.0, confirm_window=4, tick_deadline=600.0)
    policy, stream, listener = group(lambda m, n: "ack", limits)
    stream.lose_after = 3
    stream.lose_with = ChannelLost("RabbitMQ closed the channel: (404) NOT_FOUND", permanent=True)
    ended = policy.publish_group(ticks(6))
    # Then no tick is failed for a channel one entry's publish may have closed for all:
    # each goes on alone with its one attempt unused
    assert not ended.failed and not listener.failures
    assert [later.tries.attempt for _, later in ended.alone] == [0] * 6


def test_with_one_attempt_a_confirm_timeout_fails_only_the_ticks_that_waited_it() -> None:
    # e0-e3 route to a queue that never answers (a quorum queue with no leader) and fill
    # the window; e4 and e5 are healthy and were not sent when the timeout came
    limits = Limits(attempts=1, confirm_timeout=5.0, confirm_window=4, tick_deadline=600.0)
    sick = ("e0@", "e1@", "e2@", "e3@")
    policy, stream, listener = group(lambda m, n: None if m.startswith(sick) else "ack", limits)
    ended = policy.publish_group(ticks(6))
    assert sorted(t.entry for t, _ in ended.failed) == ["e0", "e1", "e2", "e3"]
    assert all("CONFIRM_TIMEOUT" in reason for _, reason in ended.failed)
    assert [(t.entry, later.tries.attempt) for t, later in ended.alone] == [("e4", 0), ("e5", 0)]
    assert len(listener.failures) == 4 and stream.abandoned == 1
