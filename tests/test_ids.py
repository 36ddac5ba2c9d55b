"""Unit tests: the id formats, built and parsed in one module (``pubtasks.ids``)."""

from __future__ import annotations

import os

from pubtasks.ids import (
    entry_of,
    is_manual,
    message_id,
    message_ids,
    owner_id,
    scheduled_at_of,
    tick_of,
)


def test_a_ticks_id_is_its_entry_and_scheduled_millisecond_and_parses_back() -> None:
    mid = message_id("nightly.report", 1700000000.1234)
    assert mid == "nightly.report@1700000000123"
    assert scheduled_at_of(mid) == 1700000000.123
    assert tick_of(mid) == ("nightly.report", mid)
    assert not is_manual(mid)


def test_a_tick_by_hand_never_shares_an_id_with_the_schedules() -> None:
    mid = message_id("e", 12.5, manual=True)
    assert mid == "e@manual-12500" != message_id("e", 12.5)
    assert scheduled_at_of(mid) == 12.5 and is_manual(mid)


def test_a_batchs_messages_are_the_tick_id_and_an_index() -> None:
    tick = message_id("a@b", 2.0)  # an entry name may hold "@": the last one counts
    assert message_ids(tick, 1) == [tick]
    ids = message_ids(tick, 3)
    assert ids == [f"{tick}.0", f"{tick}.1", f"{tick}.2"]
    assert {tick_of(m) for m in ids} == {("a@b", tick)}
    assert scheduled_at_of(ids[2]) == 2.0


def test_a_pending_publish_names_its_entry() -> None:
    assert entry_of(f"{message_id('a@b', 2.0)}.1#host.12.abc123.7") == "a@b"
    assert entry_of("no marker") == "?"


def test_an_owner_id_names_host_and_process_and_is_unique() -> None:
    first, second = owner_id(), owner_id()
    assert first != second
    assert first.split(".")[-2] == str(os.getpid())
