"""Unit tests: the account of a run matches due ticks one by one (tests/support/ledger.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab

from pubtasks.cron import Cron
from pubtasks.ids import message_id
from pubtasks.schedule import every
from tests.support.ledger import (
    FIRST_TICK,
    LAST_TICK,
    Clock,
    Expected,
    Ledger,
    Match,
    Skip,
    grid_points,
    match,
    skips_of,
    verdict,
)

E = "e"
GRID = every(0.5)
CLOCK = Clock(1000.0, 1060.0)


def ids(first: float, last: float, step: float = 0.5) -> list[str]:
    """The ids of the ticks of E from ``first`` to ``last``, inclusive."""
    n = round((last - first) / step)
    return [message_id(E, first + i * step) for i in range(n + 1)]


def run(
    consumed: Sequence[str],
    failed: dict[str, str] | None = None,
    skips: Sequence[Skip] = (),
    batch: int = 1,
    clock: Clock = CLOCK,
) -> Match:
    return match(Expected(E, GRID, batch), clock, consumed, failed or {}, skips)


def ledger_of(m: Match, failed: dict[str, str] | None = None) -> Ledger:
    return Ledger(
        [m], 0, m.delivered, m.delivered, [], 0, 0, {k: (0, v) for k, v in (failed or {}).items()}
    )


def test_every_point_between_the_first_and_the_stop_is_due_and_delivered() -> None:
    m = run(ids(1002.0, 1060.0))
    assert (m.due, m.delivered, m.missing, m.extras) == (117, 117, [], [])
    # Not yet fired before the first tick (within FIRST_TICK of the start): an edge
    assert m.edge_start == 3 and m.edge_stop == 0
    assert verdict(ledger_of(m)) == []


def test_a_gap_in_the_middle_is_missing_by_id() -> None:
    got = ids(1002.0, 1060.0)
    gone = got.pop(50)
    m = run(got)
    assert m.missing == [gone]
    assert gone in verdict(ledger_of(m))[0]


def test_a_tick_by_hand_or_off_the_grid_does_not_cancel_a_missing_one() -> None:
    got = ids(1002.0, 1060.0)
    gone = got.pop(10)
    m = run([*got, f"{E}@manual-1010123", f"{E}@1010250"])
    assert m.missing == [gone] and m.extras == [f"{E}@1010250", f"{E}@manual-1010123"]
    assert m.due == 117 and m.delivered == 116


def test_a_late_first_tick_misses_the_points_after_the_allowance() -> None:
    start = CLOCK.started + FIRST_TICK + 2.0
    m = run(ids(start, 1060.0))
    assert len(m.missing) == 4  # FIRST_TICK + 0.5 ... + 2.0 (exclusive of the first fired)
    assert m.missing[0] == message_id(E, CLOCK.started + FIRST_TICK)


def test_the_last_points_before_the_stop_are_an_edge_unless_a_later_one_fired() -> None:
    m = run(ids(1002.0, CLOCK.stopped - 1.0))
    assert m.missing == [] and m.edge_stop == 2
    m = run(ids(1002.0, CLOCK.stopped - LAST_TICK - 1.0))
    assert len(m.missing) == 2  # the stop edge is only LAST_TICK long


def test_ticks_after_the_stop_are_due_up_to_the_last_fired() -> None:
    got = ids(1002.0, CLOCK.stopped + 2.0)
    gone = got.pop(-2)
    assert run(got).missing == [gone]


def test_failures_are_bounded_by_reason() -> None:
    got = ids(1002.0, 1060.0)
    failed = {got.pop(3): "gave up after 3 attempts: 1 nacked by RabbitMQ"}
    m = run(got, failed)
    assert m.missing == [] and m.failed == {"gave up after 3 attempts: 1 nacked by RabbitMQ": 1}
    assert "none may" in verdict(ledger_of(m, failed))[0]
    assert verdict(ledger_of(m, failed), failing=("nacked by RabbitMQ",)) == []
    other = {**failed, got[5]: "TICK_DEADLINE passed"}
    assert "TICK_DEADLINE" in verdict(ledger_of(m, other), failing=("nacked by RabbitMQ",))[0]


def test_a_failed_message_that_arrived_all_the_same_is_delivered() -> None:
    got = ids(1002.0, 1060.0)
    m = run(got, {got[3]: "nacked by RabbitMQ"})
    assert m.delivered == 117 and m.failed_delivered == 1 and not m.failed


def test_skips_account_for_their_points_and_are_allowed_by_reason() -> None:
    got = ids(1002.0, 1060.0)
    paused = got[10:20]
    del got[10:20]
    record = Skip("paused", 1007.0, 1011.5, 10, 1012.0)
    m = run(got, skips=[record])
    assert m.missing == [] and m.skipped == {"paused": 10}
    assert verdict(ledger_of(m)) == ["skipped: 10 x paused"]
    assert verdict(ledger_of(m), skipping=("paused",)) == []
    assert paused[0] == message_id(E, 1007.0)


def test_a_miscounted_or_contradicted_skip_is_wrong() -> None:
    got = ids(1002.0, 1060.0)
    m = run(got, skips=[Skip("window", 1007.0, 1011.5, 9, 1012.0)])
    wrong = verdict(ledger_of(m), skipping=("window",))
    assert any("skipped yet published" in w for w in wrong)
    assert any("count 9, grid 10" in w for w in wrong)


def test_a_batch_is_matched_message_by_message() -> None:
    got = [f"{t}.{i}" for t in ids(1002.0, 1060.0) for i in range(3)]
    gone = got.pop(7)
    m = run(got, batch=3)
    assert m.due == 117 and m.due_messages == 351 and m.missing == [gone]


def test_nothing_fired_is_all_missing_once_the_allowance_is_over() -> None:
    m = run([])
    assert m.due == round((CLOCK.stopped - LAST_TICK - CLOCK.started - FIRST_TICK) / 0.5) + 1
    assert len(m.missing) == m.due


def test_a_run_too_short_to_check_is_wrong() -> None:
    m = run([], clock=Clock(1000.0, 1005.0))
    assert m.due == 0
    assert verdict(ledger_of(m)) == ["no tick was due: the run was too short to check anything"]


def test_crontab_points_are_its_instants_across_dst() -> None:
    # Europe/Berlin springs forward at 02:00 CET on 2026-03-29: */30 at 02:00 and 02:30
    # are one tick at 03:00 CEST (01:00 UTC)
    grid = Cron(crontab(minute="*/30"), ZoneInfo("Europe/Berlin"))
    start = 1774740600.0  # 2026-03-28 23:30 UTC
    points = grid_points(grid, start, start + 3 * 3600)
    assert [p - start for p in points] == [1800, 3600, 5400, 7200, 9000, 10800]
    m = match(Expected("c", grid), Clock(start, start + 3 * 3600), [], {}, [])
    assert m.due == 6 - 1  # the last point is within LAST_TICK of the stop: an edge


class Lists:
    def __init__(self, items: dict[str, list[str]]) -> None:
        self.items = items

    def lrange(self, key: str, start: int, end: int) -> list[str]:
        return self.items.get(key, [])[start : None if end == -1 else end + 1]


def test_skip_records_are_read_from_the_entry_s_list() -> None:
    raw = {"reason": "catch_up", "first": 1.5, "last": 3.0, "count": 4, "at": 9.0}
    client = Lists({"p:skips:e": [json.dumps(raw)]})
    assert skips_of(client, "p:", "e") == [Skip("catch_up", 1.5, 3.0, 4, 9.0)]
    assert skips_of(client, "p:", "other") == []


def test_the_clock_is_the_first_start_and_the_first_last_stop() -> None:
    assert Clock.of([5.0, 3.0, None], [9.0, None, 8.0]) == Clock(3.0, 8.0)
    with pytest.raises(ValueError, match="never stopped"):
        Clock.of([1.0], [None])
