"""Integration tests: the entries' lanes (``pubtasks.lanes``) against the real Redis."""

from __future__ import annotations

import pytest

from pubtasks import timing
from pubtasks.lanes import Lanes, Parked
from pubtasks.stats import Stats

pytestmark = pytest.mark.integration


def parked(n: int) -> Parked:
    return Parked(f"e@{n}000", {"entry": "e", "scheduled_at": float(n), "number": n})


def test_one_tick_holds_the_lane_and_the_others_park_in_order(stats: Stats) -> None:
    lanes = Lanes(stats)
    assert lanes.hold("e", parked(1), 1.0, 0.5)
    assert lanes.hold("e", parked(1), 1.0, 1.0)  # the holder keeps it
    assert not lanes.hold("e", parked(3), 3.0, 0.5)
    assert not lanes.hold("e", parked(2), 2.0, 0.5)
    assert lanes.hold("other", parked(4), 4.0, 0.5)  # each entry has its own lane
    assert lanes.parked("e") == 2 and lanes.entries() == {"e"}
    assert lanes.parked_ids() == {"e@2000", "e@3000"}
    ttl = stats.client.pttl(stats.keys.lane("e"))
    assert (timing.LANE_TTL + 0.5) * 1000 < ttl <= (timing.LANE_TTL + 1.0) * 1000


def test_a_holder_that_fails_hands_the_lane_to_the_oldest_parked_tick(stats: Stats) -> None:
    lanes = Lanes(stats)
    lanes.hold("e", parked(1), 1.0, 0.5)
    lanes.hold("e", parked(3), 3.0, 0.5)
    lanes.hold("e", parked(2), 2.0, 0.5)
    assert lanes.release("e", "e@5000", wake_all=False) == []  # not the holder: nothing
    [woken] = lanes.release("e", "e@1000", wake_all=False)
    assert woken == parked(2)
    assert stats.client.get(stats.keys.lane("e")) == "e@2000"
    assert lanes.hold("e", parked(2), 2.0, 0.5)  # the woken tick holds it when it runs
    assert not lanes.hold("e", parked(1), 1.0, 0.5)


def test_a_holder_that_was_confirmed_wakes_every_parked_tick(stats: Stats) -> None:
    lanes = Lanes(stats)
    lanes.hold("e", parked(1), 1.0, 0.5)
    for n in (4, 2, 3):
        lanes.hold("e", parked(n), float(n), 0.5)
    woken = lanes.release("e", "e@1000", wake_all=True)
    assert woken == [parked(2), parked(3), parked(4)]
    assert stats.client.exists(stats.keys.lane("e")) == 0
    assert lanes.entries() == set() and lanes.parked("e") == 0


def test_a_lane_nobody_holds_wakes_its_oldest_parked_tick_once(stats: Stats) -> None:
    lanes = Lanes(stats)
    lanes.hold("e", parked(1), 1.0, 0.5)
    lanes.hold("e", parked(2), 2.0, 0.5)
    lanes.hold("e", parked(3), 3.0, 0.5)
    assert lanes.wake_orphan("e") == []  # held
    stats.client.delete(stats.keys.lane("e"))  # its holder died, and the lane expired
    assert lanes.wake_orphan("e") == [parked(2)]
    assert lanes.wake_orphan("e") == []  # the woken tick holds it now
    assert lanes.parked_ids() == {"e@3000"}


def test_a_parked_tick_keeps_its_kwargs_through_redis(stats: Stats) -> None:
    lanes = Lanes(stats)
    tick = Parked(
        "e@7000",
        {"entry": "e", "scheduled_at": 7.0, "tries": {"attempt": 2, "reason": "nacked"}},
    )
    lanes.hold("e", parked(1), 1.0, 0.5)
    lanes.hold("e", tick, 7.0, 0.5)
    assert lanes.release("e", "e@1000", wake_all=False) == [tick]


def test_woken_ticks_that_could_not_be_sent_are_parked_again(stats: Stats) -> None:
    lanes = Lanes(stats)
    lanes.hold("e", parked(1), 1.0, 0.5)
    lanes.hold("e", parked(2), 2.0, 0.5)
    lanes.hold("e", parked(3), 3.0, 0.5)
    woken = lanes.release("e", "e@1000", wake_all=True)
    assert lanes.entries() == set()
    lanes.park_again("e", woken)
    assert lanes.entries() == {"e"} and lanes.parked_ids() == {"e@2000", "e@3000"}
    assert lanes.wake_orphan("e") == [parked(2)]  # oldest first, as before
