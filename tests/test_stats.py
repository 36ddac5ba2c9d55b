"""Integration tests: the Redis counters, against the real Redis."""

from __future__ import annotations

import logging

import pytest

from pubtasks import stats as stats_module
from pubtasks.bench.waiting import wait_for
from pubtasks.confirms import Delivery, Outcome, Settled
from pubtasks.control import Control
from pubtasks.errors import NotReplicated
from pubtasks.ids import message_id
from pubtasks.records import Counts, ResumePoint, SentTick, Skip
from pubtasks.schedule import Run
from pubtasks.sentinel import Agreement, FollowingConnection
from pubtasks.stats import Stats
from pubtasks.store import Replication

pytestmark = pytest.mark.integration


def delivery(n: int, entry: str = "e") -> Delivery:
    return Delivery(f"{entry}@{n}#x", f"{entry}@{n}", entry, n)


def test_every_outcome_is_counted_once_and_the_invariant_holds(stats: Stats) -> None:
    # Given four publishes, begun (published and pending)
    ds = [delivery(n) for n in range(1, 5)]
    stats.begin(ds, now=100.0)
    assert stats.snapshot().totals == Counts(published=4, pending=4)
    # When they settle: acked, acked and returned, nacked, unconfirmed
    settled = [
        Settled(ds[0], Outcome.ACKED),
        Settled(Delivery(ds[1].key, "e@2", "e", 2, returned="unroutable"), Outcome.ACKED),
        Settled(ds[2], Outcome.NACKED),
        Settled(ds[3], Outcome.UNCONFIRMED),
    ]
    assert stats.settle(settled, now=101.0) == 4
    # Then each is counted once; settling again (a retried write) counts nothing
    assert stats.settle(settled, now=102.0) == 0
    snap = stats.snapshot()
    assert snap.totals.published == 4
    assert (snap.totals.acked, snap.totals.returned) == (2, 1)
    assert (snap.totals.nacked, snap.totals.unconfirmed, snap.totals.pending) == (1, 1, 0)
    assert snap.totals.invariant_holds
    assert snap.entries["e"].invariant_holds
    # A returned message is not "the last confirmed": it was not delivered.
    assert (snap.totals.last_confirmed_number, snap.totals.last_confirmed_at) == (1, 101.0)


def test_begin_is_idempotent(stats: Stats) -> None:
    d = delivery(1)
    stats.begin([d], now=1.0)
    stats.begin([d], now=1.0)  # redis-py retrying after a lost reply
    assert stats.snapshot().totals == Counts(published=1, pending=1)


def test_entries_are_counted_apart(stats: Stats) -> None:
    a, b = delivery(1, "a"), delivery(2, "b")
    stats.begin([a, b], now=1.0)
    stats.settle([Settled(a, Outcome.ACKED)], now=2.0)
    snap = stats.snapshot()
    assert snap.entries["a"] == Counts(
        published=1, acked=1, last_confirmed_number=1, last_confirmed_at=2.0
    )
    assert snap.entries["b"] == Counts(published=1, pending=1)
    assert snap.oldest_pending_at == 1.0


def test_a_failed_tick_is_counted_once_with_its_reason(stats: Stats) -> None:
    assert stats.fail("e", [("e@1", 1)], "nacked 5 times", now=5.0) == 1
    assert stats.fail("e", [("e@1", 1)], "nacked 5 times", now=6.0) == 0
    given_up = [("e@2.0", 2), ("e@2.1", 3), ("e@1", 1)]
    assert stats.fail("e", given_up, "batch given up", now=7.0) == 2
    snap = stats.snapshot()
    assert snap.totals.failed == 3
    assert snap.entries["e"].failed == 3
    assert snap.last_error == {
        "at": "7.0",
        "entry": "e",
        "message_id": "e@2.0",
        "reason": "batch given up",
    }
    # Each failed marker keeps its message's number and reason (for an account by number)
    assert stats.client.get(stats.keys.failed("e@2.1")) == "3 batch given up"


def test_reaping_counts_abandoned_publishes_as_unconfirmed(stats: Stats) -> None:
    old, fresh = delivery(1), delivery(2)
    stats.begin([old], now=100.0)
    stats.begin([fresh], now=150.0)
    assert stats.reap(older_than=30.0, now=160.0) == 1
    # The owner of the reaped publish answers late: it is not counted twice.
    assert stats.settle([Settled(old, Outcome.ACKED)], now=161.0) == 0
    snap = stats.snapshot()
    assert (snap.totals.unconfirmed, snap.totals.pending, snap.totals.acked) == (1, 1, 0)
    assert snap.entries["e"].unconfirmed == 1
    assert snap.totals.invariant_holds


def test_message_numbers_increase(stats: Stats) -> None:
    assert [stats.next_number() for _ in range(3)] == [1, 2, 3]
    assert stats.snapshot().last_message_number == 3


def test_a_tick_keeps_its_numbers_when_asked_again(stats: Stats) -> None:
    # Beat numbers a tick, dies before sending it; the next beat fires it again
    assert stats.tick_number("e", 1.0, 3) == 1
    assert stats.tick_number("e", 1.0, 3) == 1  # the same numbers, no gap
    assert stats.tick_number("e", 2.0, 1) == 4
    assert stats.tick_number("other", 2.0, 1) == 5
    assert stats.snapshot().last_message_number == 5


def test_a_tick_fired_again_by_another_beat_keeps_its_numbers_within_the_window(
    stats: Stats,
) -> None:
    # Given beat a numbered ticks at 10 s, 11 s and 12 s; beat b, which took the lock
    # while a was still sending them, fires the 10 s and 11 s ones again
    assert [stats.tick_number("e", t, 2, keep=60) for t in (10.0, 11.0, 12.0)] == [1, 3, 5]
    # Then each gets the numbers a gave it (one message, sent twice), not new ones
    assert stats.tick_number("e", 10.0, 2, keep=60) == 1
    assert stats.tick_number("e", 11.0, 2, keep=60) == 3
    assert stats.snapshot().last_message_number == 6
    # Ticks older than the window are forgotten as newer ones are numbered
    assert stats.tick_number("e", 71.0, 1, keep=60) == 7
    assert stats.client.zcard(stats.keys.beat_numbered("e")) == 3  # 11 s, 12 s, 71 s
    assert stats.tick_number("e", 10.0, 2, keep=60) == 8  # a tick unknown: new numbers


def test_numbers_go_on_above_the_floor_when_redis_lost_the_latest(
    stats: Stats, caplog: pytest.LogCaptureFixture
) -> None:
    # Given beat was given numbers 1 to 5, then a failover lost the writes that gave
    # 4 and 5 (the new master's counter and the entry's latest tick are older)
    assert stats.tick_number("e", 1.0, 3) == 1
    assert stats.tick_number("e", 2.0, 2) == 4
    stats.client.hset(stats.keys.totals, "last_message_number", 3)
    stats.client.set(stats.keys.beat_number("e"), f"{message_id('e', 1.0)} 1")
    # When beat numbers its next tick, with the highest number it was given as floor
    with caplog.at_level(logging.WARNING, logger="pubtasks.stats"):
        first = stats.tick_number("e", 3.0, 1, floor=5)
    # Then 4 and 5 are not given again, and the lifted count is logged
    assert first == 6
    assert stats.snapshot().last_message_number == 6
    assert "lost the last 2 message number(s)" in caplog.text
    # A floor at or below what Redis holds changes nothing, and says nothing
    caplog.clear()
    assert stats.tick_number("e", 4.0, 1, floor=6) == 7
    assert stats.tick_number("e", 4.0, 1, floor=7) == 7  # asked again: the same
    assert not caplog.text


def test_numbers_no_replica_acknowledged_are_held_then_given_the_same(
    redis_url: str, prefix: str, stats: Stats
) -> None:
    # Given counters that want one replica, on a Redis that has none (a new master
    # whose old one is not back yet), and a clock for the grace
    now = [100.0]
    waiting = Stats.from_url(redis_url, prefix, wait_replicas=1)
    waiting.replication = Replication(1, lambda: now[0], grace=30.0)
    try:
        # When beat numbers a tick, it is held: not to be sent yet
        with pytest.raises(NotReplicated, match="no replica acknowledged"):
            waiting.tick_number("e", 1.0)
        # and asked again, within the grace, it is held with the same number kept
        now[0] += 10.0
        with pytest.raises(NotReplicated):
            waiting.tick_number("e", 1.0)
        assert stats.snapshot().last_message_number == 1
        # A sent record not acknowledged says so, and is kept again (not doubled)
        assert waiting.ledger.record("e", 1.0, 1, 1, 5.0) is False
        member = SentTick.member_of("e", 1.0, 1, 1, False)
        assert waiting.ledger.keep({member: 5.0}) is False
        # Past the grace the same number is given; the record is still to be written
        # again (no replica acknowledged it), and is there once, as sent
        now[0] += 20.0
        assert waiting.tick_number("e", 1.0) == 1
        assert waiting.ledger.keep({member: 5.0}) is False
        assert stats.client.zrange(stats.keys.beat_sent, 0, -1, withscores=True) == [(member, 5.0)]
    finally:
        waiting.close()


def test_numbers_go_on_once_the_sentinels_settle_on_the_redis_written_to(
    redis_url: str, prefix: str, stats: Stats
) -> None:
    # Given counters that want one replica, on a Redis that has none, and Sentinels
    # (here, what they say) that name another Redis the master
    now = [100.0]
    said = [Agreement("another-run-id", True)]
    run_id = str(stats.client.info("server")["run_id"])
    waiting = Stats.from_url(redis_url, prefix, wait_replicas=1)
    waiting.replication = Replication(1, lambda: now[0], grace=30.0, ask=lambda: said[0])
    try:
        # Then a number given here is held, past the grace too (a demoted master's)
        with pytest.raises(NotReplicated, match="no longer name the master"):
            waiting.tick_number("e", 1.0)
        assert waiting.replication.landed_on == run_id  # learned in the same round trip
        now[0] += 31.0
        with pytest.raises(NotReplicated, match="no longer name the master"):
            waiting.tick_number("e", 1.0)
        # When they settle on this Redis (no replica up, no failover), it is given at
        # once: the same number
        said[0] = Agreement(run_id, True)
        now[0] += Replication.ASK_EVERY
        assert waiting.tick_number("e", 1.0) == 1
    finally:
        waiting.close()


def test_a_redis_user_refused_info_is_held_for_the_grace_not_failed(
    redis_url: str, prefix: str, stats: Stats, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis user that may not run INFO (an ACL of +@all -@dangerous)
    user = f"pubtasks-test-{prefix.split(':')[1]}"
    stats.client.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        categories=["+@all", "-@dangerous"], commands=["+wait"],
    )  # fmt: skip
    try:
        url = redis_url.replace("redis://", f"redis://{user}:pw@")
        now = [100.0]
        waiting = Stats.from_url(url, prefix, wait_replicas=1)
        run_id = str(stats.client.info("server")["run_id"])
        settled = Agreement(run_id, True)
        waiting.replication = Replication(1, lambda: now[0], grace=30.0, ask=lambda: settled)
        try:
            # Then a number no replica acknowledged is held (not failed), as without
            # Sentinels, with one line saying why
            with pytest.raises(NotReplicated, match="no replica acknowledged"):
                waiting.tick_number("e", 1.0)
            assert "Redis refused INFO" in caplog.text
            # and given past the grace
            now[0] += 30.0
            assert waiting.tick_number("e", 1.0) == 1
        finally:
            waiting.close()
    finally:
        stats.client.acl_deluser(user)


def test_a_paused_entrys_tick_gets_no_number_but_a_tick_by_hand_does(stats: Stats) -> None:
    # Given entry e numbered at 1 s, then paused
    assert stats.tick_number("e", 1.0) == 1
    Control(stats).pause("e", now=1.5)
    # Then its tick at 1 s keeps its number (it was fired before the pause), the one at
    # 2 s gets none and becomes where the next beat goes on from; other entries go on
    assert stats.tick_number("e", 1.0) == 1
    assert stats.tick_number("e", 2.0) is None
    assert stats.client.get(stats.keys.beat_last("e")) == "2.0"
    assert stats.tick_number("other", 2.0) == 2
    # A tick fired by hand is numbered, paused or not, under its own id
    assert stats.tick_number("e", 2.0, manual=True) == 3
    assert stats.tick_number("e", 2.0, manual=True) == 3
    Control(stats).resume("e", now=2.5)
    assert stats.tick_number("e", 3.0) == 4
    assert stats.snapshot().last_message_number == 4


def test_each_tick_is_counted_fired_once_late_or_by_hand(stats: Stats) -> None:
    # Given ticks numbered: one asked for twice (a retried write), one late, one by hand
    stats.tick_number("e", 1.0)
    stats.tick_number("e", 1.0)
    stats.tick_number("e", 2.0, late=True)
    stats.tick_number("e", 2.5, manual=True)
    # and one skipped while paused
    Control(stats).pause("e", now=2.6)
    assert stats.tick_number("e", 3.0, late=True) is None
    # Then each fired tick is counted once, the skipped one not at all
    e = stats.snapshot().entries["e"]
    assert (e.ticks, e.ticks_late, e.ticks_manual) == (2, 1, 1)


def skipped_of(stats: Stats, entry: str) -> tuple[int, dict[str, int]]:
    e = stats.snapshot().entries[entry]
    return e.skipped, e.skipped_by()


def test_a_tick_skipped_while_paused_is_counted_once_with_its_record(stats: Stats) -> None:
    # Given entry e paused after its tick at 1 s
    assert stats.tick_number("e", 1.0) == 1
    Control(stats).pause("e", now=1.5)
    # When its ticks at 2 s and 3 s are skipped, each asked for twice (a retried write)
    for t in (2.0, 2.0, 3.0, 3.0):
        assert stats.tick_number("e", t, now=t + 0.01) is None
    # and the tick at 1 s, numbered before the pause, is asked for again (a beat that
    # died before recording it sent): it keeps its number, and is not skipped
    assert stats.tick_number("e", 1.0) == 1
    # Then two ticks are counted skipped, paused, in the entry and the totals
    assert skipped_of(stats, "e") == (2, {"paused": 2, "catch_up": 0, "window": 0, "overlap": 0})
    totals = stats.snapshot().totals
    assert (totals.skipped, totals.skipped_paused) == (2, 2)
    # each with its record, newest first
    assert stats.skips("e") == [
        Skip("paused", 3.0, 3.0, 1, 3.01),
        Skip("paused", 2.0, 2.0, 1, 2.01),
    ]
    assert stats.client.get(stats.keys.beat_last("e")) == "3.0"
    # and in the JSON of pubtasks stats
    out = stats.snapshot().as_json(now=10.0)
    assert (out["skipped"], out["skipped_paused"], out["skipped_window"]) == (2, 2, 0)
    assert out["entries"]["e"]["skipped_paused"] == 2


def test_a_paused_tick_at_or_before_the_latest_numbered_one_is_not_counted(stats: Stats) -> None:
    # Given ticks at 1 s and 2 s numbered, the one at 1 s sent but not recorded sent
    # and its numbers no longer kept (keep: a catch-up window of 0.5 s)
    assert stats.tick_number("e", 1.0, keep=0.5) == 1
    assert stats.tick_number("e", 2.0, keep=0.5) == 2
    # When the entry is paused and a beat fires the tick at 1 s again
    Control(stats).pause("e", now=2.5)
    assert stats.tick_number("e", 1.0, keep=0.5) is None
    # Then it is not counted skipped: it was fired already (and numbered)
    assert skipped_of(stats, "e")[0] == 0
    assert stats.skips("e") == []
    assert stats.tick_number("e", 3.0) is None
    assert skipped_of(stats, "e")[0] == 1


def test_a_tick_numbered_before_a_pause_keeps_its_numbers_when_fired_again(
    stats: Stats,
) -> None:
    # A tick numbered before the pause was fired: fired again (a beat that died before
    # sending it, or a second beat), it is sent with its numbers, not skipped
    assert stats.tick_number("e", 1.0) == 1
    assert stats.tick_number("e", 2.0) == 2
    Control(stats).pause("e", now=2.5)
    assert stats.tick_number("e", 1.0) == 1
    assert skipped_of(stats, "e")[0] == 0


def test_ticks_passed_over_for_the_window_are_counted_with_the_next_tick_once(
    stats: Stats,
) -> None:
    # Given a beat that fires the tick at 116 s after its last at 100 s, passing over
    # 101..115 (more than the window late)
    run = Run("window", 101.0, 115.0, 15)
    first = stats.tick_number("e", 116.0, window=run, now=120.5)
    # When the write is retried
    assert stats.tick_number("e", 116.0, window=run, now=120.6) == first
    # Then the tick is numbered and counted fired once, and the run skipped once
    e = stats.snapshot().entries["e"]
    assert (e.ticks, e.skipped, e.skipped_window) == (1, 15, 15)
    assert stats.skips("e") == [Skip("window", 101.0, 115.0, 15, 120.5)]
    # A window run already covered by the last tick (another beat recorded it) is not
    stats.client.set(stats.keys.beat_last("f"), 115.0)
    stats.tick_number("f", 116.0, window=run, now=120.5)
    assert stats.snapshot().entries["f"].skipped == 0


def test_a_skip_is_a_compare_and_set_of_the_last_tick_counted_once(stats: Stats) -> None:
    # Given entry e's last tick sent at 100 s, as a beat taking the lock reads it
    stats.ledger.record("e", 100.0, 1, 1, now=100.1)
    [seen] = stats.resume_points(["e"]).values()
    assert seen == ResumePoint(last="100.0")
    runs = [Run("window", 101.0, 115.0, 15), Run("catch_up", 116.0, 119.0, 4)]
    # When it counts the missed ticks it does not fire, twice (a retried write)
    assert stats.skip("e", runs, seen, now=120.5) == 19
    assert stats.skip("e", runs, seen, now=120.5) == 0
    # and a second beat that read the same state decides otherwise
    assert stats.skip("e", [Run("catch_up", 101.0, 120.0, 20)], seen, now=120.6) is None
    # Then the runs are counted once, by reason, and the last tick moved past them
    assert skipped_of(stats, "e") == (19, {"paused": 0, "catch_up": 4, "window": 15, "overlap": 0})
    assert stats.snapshot().totals.skipped == 19
    assert stats.skips("e") == [
        Skip("catch_up", 116.0, 119.0, 4, 120.5),
        Skip("window", 101.0, 115.0, 15, 120.5),
    ]
    assert stats.resume_points(["e"])["e"].last_at == 119.0
    # A beat that reads again decides from there
    again = stats.resume_points(["e"])["e"]
    assert stats.skip("e", [Run("catch_up", 120.0, 120.0, 1)], again, now=121.0) == 1
    # The compare covers the latest tick numbered too
    stats.tick_number("e", 121.0)
    assert stats.skip("e", [Run("catch_up", 122.0, 122.0, 1)], again, now=123.0) is None


def test_resume_points_read_the_last_tick_the_numbered_one_and_the_pause(stats: Stats) -> None:
    assert stats.resume_points(["e"]) == {"e": ResumePoint()}
    stats.tick_number("e", 1.5)
    stats.ledger.record("e", 1.0, 1, 1, now=1.1)
    Control(stats).pause("e", now=2.0)
    Control(stats).pause("f", now=2.0)
    Control(stats).resume("f", now=3.0)
    points = stats.resume_points(["e", "f"])
    assert points["e"] == ResumePoint(last="1.0", numbered="e@1500 1", paused=True)
    assert (points["e"].last_at, points["e"].numbered_at) == (1.0, 1.5)
    assert points["f"] == ResumePoint(resumed_at=3.0)


def test_only_the_newest_skip_records_are_kept_and_clear_removes_them(
    stats: Stats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_module, "SKIPS_KEPT", 3)
    Control(stats).pause("e", now=0.0)
    for t in range(1, 6):
        stats.tick_number("e", float(t), now=float(t))
    assert [s.first for s in stats.skips("e")] == [5.0, 4.0, 3.0]
    assert skipped_of(stats, "e")[0] == 5  # the counters count them all
    stats.clear()
    assert stats.client.exists(stats.keys.skips("e")) == 0
    assert stats.skips("e") == []


def test_acked_publishes_fill_their_entrys_latency_histogram(stats: Stats) -> None:
    # Given publishes of ticks at 100 s (two messages of a batch), a tick by hand asked
    # for at 100.5 s, a nacked one and one whose acked reply comes 90 s late
    def d(key: str) -> Delivery:
        return Delivery(key, key.partition("#")[0], "e", 1)

    fast, batch, by_hand, nacked = (
        d("e@100000#p.1"),
        d("e@100000.1#p.2"),
        d("e@manual-100500#p.3"),
        d("e@100000.2#p.4"),
    )
    slow = d("e@10000#p.5")
    stats.begin([fast, batch, by_hand, nacked, slow], now=100.0)
    stats.settle(
        [
            Settled(fast, Outcome.ACKED),
            Settled(batch, Outcome.ACKED),
            Settled(by_hand, Outcome.ACKED),
            Settled(nacked, Outcome.NACKED),
        ],
        now=100.004,
    )
    stats.settle([Settled(slow, Outcome.ACKED)], now=100.0)
    # Then each acked one adds its latency from its tick's time: 4 ms twice, 0 for the
    # one by hand (acked before its request's time on a skewed clock: not negative), 90 s
    h = stats.latencies(["e", "other"])
    assert list(h) == ["e"]
    buckets = dict(h["e"].buckets)
    assert (buckets[0.001], buckets[0.0025], buckets[0.005]) == (1, 1, 3)
    assert (buckets[60.0], buckets[float("inf")]) == (3, 4)
    assert h["e"].count == 4
    assert h["e"].sum == pytest.approx(90.008, abs=1e-5)


def test_a_manual_ticks_messages_are_marked_done_by_index(stats: Stats) -> None:
    # Given a tick by hand of 2 messages, the first acked, the second failed
    tick = message_id("e", 7.0, manual=True)
    ds = [Delivery(f"{tick}.{i}#x", f"{tick}.{i}", "e", i + 1) for i in range(2)]
    stats.begin(ds, now=1.0)
    stats.settle([Settled(ds[0], Outcome.ACKED)], now=2.0)
    stats.fail("e", [(f"{tick}.1", 2)], "gave up", now=3.0)
    # Then both are done, under the manual tick's id, and the entry is counted
    assert tick == "e@manual-7000"
    assert stats.done(tick, 2) == {0, 1}
    assert stats.done("e@7000", 2) == set()
    snap = stats.snapshot()
    assert (snap.entries["e"].acked, snap.entries["e"].failed) == (1, 1)


def test_what_was_counted_acked_returned_or_failed_is_marked_done(stats: Stats) -> None:
    # Given a tick of 4 messages: 0 acked, 1 nacked, 2 returned, 3 failed
    ds = [Delivery(f"e@7.{i}#x", f"e@7.{i}", "e", i + 1) for i in range(4)]
    stats.begin(ds, now=1.0)
    returned = Delivery(ds[2].key, ds[2].message_id, "e", 3, returned="unroutable")
    settled = [Settled(ds[0], Outcome.ACKED), Settled(ds[1], Outcome.NACKED)]
    stats.settle([*settled, Settled(returned, Outcome.ACKED)], now=2.0)
    stats.fail("e", [("e@7.3", 4)], "gave up", now=3.0)
    # Then 0, 2 and 3 are done (a redelivery publishes message 1 only); so is a lone tick
    assert stats.done("e@7", 4) == {0, 2, 3}
    stats.begin([delivery(8)], now=4.0)
    assert stats.done("e@8", 1) == set()
    stats.settle([Settled(delivery(8), Outcome.ACKED)], now=5.0)
    assert stats.done("e@8", 1) == {0}
    assert 0 < stats.client.ttl(stats.keys.done("e@8")) <= 2 * 3600


def test_an_entrys_pending_is_counted_in_the_pending_set(stats: Stats) -> None:
    # Given two publishes of entry a, begun
    stats.begin([delivery(1, "a"), delivery(2, "a")], now=1.0)
    assert stats.snapshot().entries["a"].pending == 2
    # When one vanishes from the pending set without an outcome (a lost write)
    stats.client.zrem(stats.keys.pending, "a@1#x")
    # Then the entry's invariant says so: pending is measured, not derived
    snap = stats.snapshot()
    assert snap.entries["a"].pending == 1
    assert not snap.entries["a"].invariant_holds and not snap.totals.invariant_holds


def test_live_workers_say_what_they_hold_and_gone_ones_are_forgotten(stats: Stats) -> None:
    stats.heartbeat("w1", ["t1", "t2"], ttl=10)
    stats.heartbeat("w2", [], ttl=10)
    stats.heartbeat("w3", ["t3"], ttl=10)
    assert stats.held_by_live_workers() == {"t1", "t2", "t3"}
    # w3's heartbeat expires (it was killed), and w1's
    stats.client.delete(stats.keys.worker("w3"))
    stats.client.pexpire(stats.keys.worker("w1"), 1)
    wait_for(lambda: not stats.client.exists(stats.keys.worker("w1")), 5, "w1's expiry", 0.01)
    assert stats.held_by_live_workers() == set()
    assert stats.client.smembers(stats.keys.workers) == {"w2"}


class Pool:
    """What a FollowingConnection asks of its pool: where the master is now."""

    is_master = True
    check_connection = False

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    def get_master_address(self) -> tuple[str, int]:
        return self.address


def test_a_sentinel_connection_asks_where_the_master_is_on_every_connect() -> None:
    # Given a connection whose last master (port 1) is gone, and a pool that now names
    # the running Redis (as the Sentinels would after a failover)
    conn = FollowingConnection(connection_pool=Pool(("127.0.0.1", 6379)), port=1)
    try:
        # When it reconnects as a retry does (not through connect())
        conn.connect_check_health(check_health=False)
        # Then it went to the master named now, not to the address it had
        assert conn.port == 6379
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG")
    finally:
        conn.disconnect()
