"""Unit tests: the messages a tick publishes, their bodies and their properties."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from kombu.serialization import register, unregister

from pubtasks.errors import BodyError
from pubtasks.framing import serialize_properties
from pubtasks.ids import message_id, scheduled_at_of
from pubtasks.message import (
    BINARY,
    CONTENT_TYPE,
    PROPERTIES_BUDGET,
    TEXT,
    Body,
    Recipe,
    Tick,
    body,
    encode,
    properties,
)


def test_message_id_is_stable_for_a_tick_and_differs_between_ticks() -> None:
    assert message_id("publish-text", 1795708650.5) == "publish-text@1795708650500"
    assert message_id("publish-text", 1795708650.5) == message_id("publish-text", 1795708650.5)
    assert message_id("publish-text", 1795708650.5) != message_id("publish-text", 1795708651.0)
    assert message_id("a", 1.0) != message_id("b", 1.0)


def test_body_carries_number_and_both_times() -> None:
    tick = Tick("publish-text", 1795708650.5, 42)
    [out] = tick.messages()
    got = json.loads(body(tick, out, published_at=1795708650.503))
    assert got["message_number"] == 42
    assert got["scheduled_at"] == 1795708650.5
    assert got["published_at"] == 1795708650.503
    assert got["entry"] == "publish-text"


def test_default_properties_are_persistent_identified_and_timestamped() -> None:
    tick = Tick("publish-text", 1795708650.5, 42)
    props = properties(tick, tick.messages()[0], 1795708650.97, None)
    assert props == {
        "message_id": "publish-text@1795708650500",
        "app_id": "pubtasks",
        "delivery_mode": 2,
        "timestamp": 1795708650,
        "content_type": CONTENT_TYPE,
    }


def test_the_default_message_keeps_within_the_properties_budget() -> None:
    tick = Tick("publish-text", 1795708650.5, 42)
    props = properties(tick, tick.messages()[0], 1795708650.97, None)
    assert len(serialize_properties(props)) <= PROPERTIES_BUDGET


def test_a_batch_tick_numbers_and_names_each_message() -> None:
    tick = Tick("bulk", 10.0, number=100, batch=3)
    assert [(o.index, o.message_id, o.number) for o in tick.messages()] == [
        (0, "bulk@10000.0", 100),
        (1, "bulk@10000.1", 101),
        (2, "bulk@10000.2", 102),
    ]
    assert json.loads(body(tick, tick.messages()[2], 10.5))["message_number"] == 102


# -- bodies of an entry's own -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "serializer", "expected"),
    [
        (
            {"job": "rebuild-report"},
            None,
            Body(b'{"job": "rebuild-report"}', CONTENT_TYPE, "utf-8"),
        ),
        ([1, 2], "json", Body(b"[1, 2]", CONTENT_TYPE, "utf-8")),
        ("héllo", None, Body("héllo".encode(), TEXT, "utf-8")),
        ("héllo", "json", Body(b'"h\\u00e9llo"', CONTENT_TYPE, "utf-8")),
        (b"\x00\xff", None, Body(b"\x00\xff", BINARY)),
        (None, None, Body(b"null", CONTENT_TYPE, "utf-8")),
    ],
)
def test_a_body_is_encoded_by_its_kind(value: Any, serializer: str | None, expected: Body) -> None:
    assert encode(value, serializer) == expected


def test_a_named_serializer_comes_from_kombus_registry() -> None:
    got = encode({"a": 1}, "pickle")
    assert got.content_type == "application/x-python-serialize"
    assert got.content_encoding is None  # kombu's "binary" says nothing
    assert pickle.loads(got.data) == {"a": 1}


def test_a_body_the_serializer_cannot_encode_says_what_and_why() -> None:
    with pytest.raises(BodyError, match=r"^json cannot encode a set: .*not JSON serializable"):
        encode({1, 2})


def test_an_unknown_serializer_says_which_are_there() -> None:
    with pytest.raises(BodyError, match=r"^serializer 'nope' is not available .*json"):
        encode({"a": 1}, "nope")


def test_an_own_body_carries_the_tick_in_headers_and_the_entrys_properties() -> None:
    recipe = Recipe(
        exchange="heartbeat",
        routing_key="",
        body=encode("beat"),
        headers={"مفتاح": "قيمة", "nested": {"键": ["值", 1]}},
        properties={"priority": 5, "expiration": "60000", "type": "heartbeat"},
    )
    tick = Tick("heartbeat", 1795708650.5, 7, recipe=recipe)
    [out] = tick.messages()
    props = properties(tick, out, 1795708650.9, recipe.body)
    assert props == {
        "message_id": "heartbeat@1795708650500",
        "app_id": "pubtasks",
        "delivery_mode": 2,
        "timestamp": 1795708650,
        "content_type": TEXT,
        "content_encoding": "utf-8",
        "application_headers": {
            "مفتاح": "قيمة",
            "nested": {"键": ["值", 1]},
            "x-message-number": 7,
            "x-scheduled-at": 1795708650.5,
        },
        "priority": 5,
        "expiration": "60000",
        "type": "heartbeat",
    }
    serialize_properties(props)  # py-amqp can put it on the wire


def test_the_entrys_properties_win_over_the_bodys_content_type() -> None:
    recipe = Recipe(body=encode(b"%PDF"), properties={"content_type": "application/pdf"})
    tick = Tick("report", 1.0, 1, recipe=recipe)
    props = properties(tick, tick.messages()[0], 1.0, recipe.body)
    assert props["content_type"] == "application/pdf"


def payload_of(**tick: Any) -> dict[str, Any]:
    return {"echo": tick}


def failing(**_: Any) -> None:
    raise RuntimeError("disk full")


def test_a_payload_is_called_with_the_tick_and_its_result_encoded() -> None:
    recipe = Recipe(payload=payload_of, payload_name="tests:payload_of")
    tick = Tick("snap", 2.5, 9, recipe=recipe)
    [out] = tick.messages()
    got = json.loads(recipe.make(tick.entry, tick.scheduled_at, out).data)
    assert got == {
        "echo": {
            "entry": "snap",
            "scheduled_at": 2.5,
            "message_number": 9,
            "message_id": "snap@2500",
        }
    }


def test_a_payload_that_raises_is_a_body_error_quoting_it() -> None:
    recipe = Recipe(payload=failing, payload_name="tests:failing")
    tick = Tick("snap", 2.5, 9, recipe=recipe)
    with pytest.raises(BodyError, match=r"^payload tests:failing raised RuntimeError: disk full$"):
        recipe.make(tick.entry, tick.scheduled_at, tick.messages()[0])


def test_a_payload_result_that_cannot_be_encoded_is_a_body_error() -> None:
    recipe = Recipe(payload=lambda **_: {1, 2}, payload_name="tests:sets")
    tick = Tick("snap", 2.5, 9, recipe=recipe)
    with pytest.raises(BodyError, match=r"^payload tests:sets returned a body that json cannot"):
        recipe.make(tick.entry, tick.scheduled_at, tick.messages()[0])


def test_any_serializer_registered_with_kombu_can_encode_a_body() -> None:
    register(
        "shout",
        lambda value: json.dumps(value).upper(),
        json.loads,
        content_type="application/x-shout",
        content_encoding="utf-8",
    )
    try:
        assert encode({"a": "b"}, "shout") == Body(b'{"A": "B"}', "application/x-shout", "utf-8")
    finally:
        unregister("shout")


def test_a_tick_fired_by_hand_has_an_id_of_its_own() -> None:
    # Given a tick by hand at the very millisecond of a tick of the schedule
    by_hand = Tick(entry="e", scheduled_at=12.0, number=5, batch=2, manual=True)
    # Then its ids are marked manual, never those of the schedule's tick, and they
    # give back the entry's name and the time of the request
    assert by_hand.message_id == "e@manual-12000" != message_id("e", 12.0)
    assert [m.message_id for m in by_hand.messages()] == ["e@manual-12000.0", "e@manual-12000.1"]
    assert scheduled_at_of("e@manual-12000.1") == 12.0
    assert scheduled_at_of("e@12000") == 12.0
