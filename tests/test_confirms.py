"""Unit tests: turning basic.ack / basic.nack / basic.return into outcomes."""

from __future__ import annotations

import pytest

from pubtasks.confirms import Delivery, Outcome, Tracker


def tracked(n: int) -> tuple[Tracker, list[Delivery]]:
    tracker = Tracker()
    deliveries = [Delivery(f"k{i}", f"id{i}", "e", i) for i in range(1, n + 1)]
    for d in deliveries:
        tracker.published(d)
    return tracker, deliveries


def test_tags_count_from_one_per_channel() -> None:
    tracker = Tracker()
    assert [tracker.published(Delivery(f"k{i}", "m", "e", i)) for i in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("tag", "multiple", "settled_keys", "left"),
    [
        (3, False, ["k3"], 4),  # a single ack settles its own tag only
        (3, True, ["k1", "k2", "k3"], 2),  # multiple: every tag up to and including 3
        (5, True, ["k1", "k2", "k3", "k4", "k5"], 0),
        (0, True, ["k1", "k2", "k3", "k4", "k5"], 0),  # tag 0 with multiple: all outstanding
        (9, False, [], 5),  # an unknown tag settles nothing
    ],
)
def test_confirm_settles_exactly_the_covered_tags(
    tag: int, multiple: bool, settled_keys: list[str], left: int
) -> None:
    tracker, _ = tracked(5)
    settled = tracker.confirm(tag, multiple, Outcome.ACKED)
    assert [s.delivery.key for s in settled] == settled_keys
    assert all(s.outcome is Outcome.ACKED for s in settled)
    assert len(tracker) == left


def test_a_tag_is_settled_once_even_when_a_later_multiple_covers_it() -> None:
    # Given a nack for tag 2 alone
    tracker, _ = tracked(4)
    first = tracker.confirm(2, False, Outcome.NACKED)
    # When a multiple ack up to tag 4 follows
    second = tracker.confirm(4, True, Outcome.ACKED)
    # Then tag 2 stays nacked and is not counted again
    assert [(s.delivery.key, s.outcome) for s in first] == [("k2", Outcome.NACKED)]
    assert [s.delivery.key for s in second] == ["k1", "k3", "k4"]


def test_multiple_nack_counts_every_covered_publish() -> None:
    tracker, _ = tracked(3)
    settled = tracker.confirm(3, True, Outcome.NACKED)
    assert [s.outcome for s in settled] == [Outcome.NACKED] * 3


def test_return_marks_the_delivery_then_its_ack_counts_it_returned() -> None:
    tracker, deliveries = tracked(2)
    tracker.returned("id2", "unroutable: (312) NO_ROUTE")
    settled = tracker.confirm(2, True, Outcome.ACKED)
    assert [(s.delivery.key, s.returned) for s in settled] == [("k1", False), ("k2", True)]
    assert deliveries[1].returned == "unroutable: (312) NO_ROUTE"


def test_return_for_an_unknown_message_is_ignored() -> None:
    tracker, _ = tracked(1)
    tracker.returned("nope", "unroutable")
    assert not tracker.confirm(1, False, Outcome.ACKED)[0].returned


def test_losing_the_channel_makes_every_waiting_publish_unconfirmed() -> None:
    tracker, _ = tracked(3)
    tracker.confirm(1, False, Outcome.ACKED)
    lost = tracker.lose_all()
    assert [(s.delivery.key, s.outcome) for s in lost] == [
        ("k2", Outcome.UNCONFIRMED),
        ("k3", Outcome.UNCONFIRMED),
    ]
    assert len(tracker) == 0
