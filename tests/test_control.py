"""Control at run time: pause, resume and trigger in Redis, and the schedule listing."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from celery.schedules import crontab

from pubtasks.control import Control, State
from pubtasks.listing import as_json, render, rows
from pubtasks.records import Counts
from pubtasks.schedule import every
from pubtasks.stats import Stats

SCHEDULE = {
    "fast": {"task": "pubtasks.publish", "schedule": every(0.2)},
    "nightly": {
        "task": "pubtasks.publish",
        "schedule": crontab(minute=30, hour=2),
        "options": {"catch_up": "latest", "catch_up_within": 86400},
    },
    "relative": {"task": "pubtasks.publish", "schedule": 5},
    "other": {"task": "app.clean", "schedule": every()},
}


@pytest.mark.integration
def test_pause_and_resume_are_kept_in_redis_and_say_what_they_found(stats: Stats) -> None:
    control = Control(stats)
    assert control.pause("fast", now=10.0) is None
    assert control.pause("fast", now=11.0) == 10.0  # already paused, since 10 s
    assert control.state([]).paused == {"fast": 10.0}
    assert control.resume("fast", now=12.0) == 10.0
    assert control.resume("fast", now=13.0) is None  # was not paused
    state = control.state(["fast"])
    assert (state.paused, state.resumed) == ({}, {"fast": 12.0})
    # The entry's last tick is not moved (the resume is no tick): a beat taking the lock
    # later (one was down during the pause) reads when it was resumed, counts the ticks
    # due until then skipped (paused) and does not catch them up (test_beat)
    assert state.last == {}
    assert stats.resume_points(["fast"])["fast"].resumed_at == 12.0


@pytest.mark.integration
def test_a_resume_never_moves_the_last_tick_back(stats: Stats) -> None:
    stats.client.set(stats.keys.beat_last("fast"), 20.0)
    control = Control(stats)
    control.pause("fast", now=10.0)
    control.resume("fast", now=15.0)
    assert control.state(["fast"]).last == {"fast": 20.0}


@pytest.mark.integration
def test_triggers_wait_in_order_each_with_a_time_of_its_own(stats: Stats) -> None:
    control = Control(stats)
    # Given three requests in the same millisecond
    asked = [control.trigger("fast", now=5.0) for _ in range(3)]
    # Then they are three ticks, a millisecond apart, waiting in order
    assert [t.tick_id for t in asked] == [
        "fast@manual-5000",
        "fast@manual-5001",
        "fast@manual-5002",
    ]
    assert control.triggers() == asked
    assert control.state([]).waiting == 3
    assert control.state([]).triggered == {"fast": 5.002}
    # A request beat sent is removed in the same round trip that records it sent
    stats.ledger.record("fast", asked[0].at, 7, 1, now=6.0, trigger=asked[0].member)
    assert control.triggers() == asked[1:]
    assert stats.client.get(stats.keys.beat_last("fast")) is None  # not a grid tick
    control.drop(asked[1].member)
    assert control.triggers() == asked[2:]


def test_the_listing_shows_each_publish_entry_with_its_state() -> None:
    state = State(
        holder="host.42.abc",
        holder_ttl=8.5,
        paused={"fast": 990.0},
        resumed={},
        triggered={"nightly": 995.0},
        last={"fast": 999.8},
        waiting=1,
    )
    counts = {"fast": Counts(published=3, acked=3, last_confirmed_at=999.0)}
    listed = rows(SCHEDULE, 1.0, UTC, state=state, entries=counts, now=1000.0)
    assert [r.name for r in listed] == ["fast", "nightly", "relative"]
    fast, nightly, relative = listed
    assert (fast.schedule, fast.paused_since, fast.counts.acked) == ("every 0.2 s", 990.0, 3)
    assert nightly.schedule == "crontab 30 2 * * * (UTC)"
    assert nightly.next_tick == 2 * 3600 + 30 * 60  # 02:30 on 1 January 1970, in UTC
    assert nightly.catch_up is not None and nightly.catch_up.policy == "latest"
    assert relative.catch_up is None and relative.next_tick is None
    text = render(listed, state, "redis://r:6379/0", "p:", now=1000.0)
    assert "held by host.42.abc" in text
    assert "PAUSED since 1970-01-01T00:16:30.000Z (10.0 s ago)" in text
    assert "catch_up latest within 86400 s" in text
    out = json.loads(json.dumps(as_json(listed, state)))
    assert out["beat_lock"] == {"holder": "host.42.abc", "expires_in": 8.5}
    assert out["entries"]["fast"]["paused"] is True
    assert out["entries"]["fast"]["next_tick"] is None
    assert out["entries"]["nightly"]["last_manual"] == 995.0
    assert out["entries"]["fast"]["acked"] == 3


def test_nobody_holding_the_lock_is_said_plainly() -> None:
    state = State(None, None, {}, {}, {}, {}, 0)
    assert "nobody holds it" in render([], state, "r", "p:", now=0.0)
