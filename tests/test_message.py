"""Unit tests: the message a tick publishes."""

from __future__ import annotations

import json

import pytest

from pubtasks.defaults import DEFAULT_ENTRY
from pubtasks.framing import serialize_properties
from pubtasks.message import (
    CONTENT_TYPE,
    MESSAGE_ID_ROOM,
    PROPERTIES_BUDGET,
    Tick,
    body,
    message_id,
    properties,
)


def test_message_id_is_stable_for_a_tick_and_differs_between_ticks() -> None:
    assert message_id("publish-text", 1795708650.5) == "publish-text@1795708650500"
    assert message_id("publish-text", 1795708650.5) == message_id("publish-text", 1795708650.5)
    assert message_id("publish-text", 1795708650.5) != message_id("publish-text", 1795708651.0)
    assert message_id("a", 1.0) != message_id("b", 1.0)


def test_body_carries_number_and_both_times() -> None:
    tick = Tick("publish-text", 1795708650.5, "example.text", 42)
    [out] = tick.messages()
    got = json.loads(body(tick, out, published_at=1795708650.503))
    assert got["message_number"] == 42
    assert got["scheduled_at"] == 1795708650.5
    assert got["published_at"] == 1795708650.503
    assert got["entry"] == "publish-text"


def test_properties_are_persistent_and_identified() -> None:
    tick = Tick("publish-text", 1795708650.5, "example.text", 42)
    props = properties(tick.messages()[0])
    assert props == {
        "message_id": "publish-text@1795708650500",
        "app_id": "pubtasks",
        "delivery_mode": 2,
    }


@pytest.mark.parametrize(
    ("entry", "fits"),
    [
        (DEFAULT_ENTRY, True),
        ("e" * 15, True),  # the longest entry name that fits, with ids up to .9999
        ("e" * 16, False),
    ],
)
def test_properties_fit_the_budget_with_batch_ids_up_to_9999(entry: str, fits: bool) -> None:
    longest = Tick(entry, 1795708650.5, "example.text", 1, batch=10_000).messages()[-1]
    # What goes on the wire: these properties and the content type, nothing else.
    wire = {**properties(longest), "content_type": CONTENT_TYPE}
    assert (len(serialize_properties(wire)) <= PROPERTIES_BUDGET) is fits
    assert (len(longest.message_id) <= MESSAGE_ID_ROOM) is fits


def test_a_batch_tick_numbers_and_names_each_message() -> None:
    tick = Tick("bulk", 10.0, "k", number=100, batch=3)
    assert [(o.index, o.message_id, o.number) for o in tick.messages()] == [
        (0, "bulk@10000.0", 100),
        (1, "bulk@10000.1", 101),
        (2, "bulk@10000.2", 102),
    ]
    assert json.loads(body(tick, tick.messages()[2], 10.5))["message_number"] == 102
