"""Unit tests: the cached basic.publish frames are byte for byte what py-amqp writes."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message
from amqp.exceptions import FrameSyntaxError
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from pubtasks.framing import Frames
from pubtasks.properties import drop_fillers

FRAME_MAX = 4096
TYPICAL = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "application_headers": {},
    "priority": 0,
    "delivery_mode": 2,
    "message_id": "publish@1764182400000.17",
    "timestamp": 1764182400,
    "app_id": "pubtasks",
}


def amqp_frames(
    body: bytes | str,
    properties: dict[str, Any],
    exchange: str = "message",
    routing_key: str = "example.text",
    mandatory: bool = True,
    channel: int = 1,
) -> bytes:
    """What py-amqp's basic_publish writes to the socket for the same message."""
    written: list[bytes] = []
    connection = SimpleNamespace(frame_max=FRAME_MAX, bytes_sent=0)
    transport = SimpleNamespace(write=lambda data: written.append(bytes(data)))
    write = frame_writer(connection, transport)
    args = dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
    write(1, channel, spec.Basic.Publish, args, Message(body, **properties))
    return b"".join(written)


def ours(
    frames: Frames,
    body: bytes | str,
    properties: dict[str, Any],
    exchange: str = "message",
    routing_key: str = "example.text",
    mandatory: bool = True,
) -> bytes:
    return frames.publish(body, dict(properties), exchange, routing_key, mandatory=mandatory)


@pytest.mark.parametrize(
    ("body", "properties"),
    [
        (b"x" * 200, TYPICAL),  # what a tick sends
        (b"", TYPICAL),  # no body: no body frame
        (b"y" * (FRAME_MAX * 2 + 5), TYPICAL),  # split over three body frames
        ("caf\u00e9", {k: v for k, v in TYPICAL.items() if k != "content_encoding"}),
        (b"x", {**TYPICAL, "message_id": "e\u00e9@1.2"}),  # a non-ASCII id
        (b"x", {**TYPICAL, "message_id": "m" * 255}),  # the longest shortstr
        (b"x", {**TYPICAL, "message_id": "a\udc80b"}),  # a lone surrogate, as py-amqp writes it
        (b"x", {**TYPICAL, "application_headers": {"a": True, "b": 1, "c": [1, "x"]}}),
        (b"x", {"message_id": "only"}),
        (b"x", {"delivery_mode": 2}),  # no message_id: nothing to splice
        (b"x", {}),
    ],
)
def test_frames_equal_py_amqp(body: bytes | str, properties: dict[str, Any]) -> None:
    assert ours(Frames(1, FRAME_MAX), body, properties) == amqp_frames(body, properties)


def test_cached_parts_follow_each_change() -> None:
    """One Frames serves many messages: each differs in exactly what it should."""
    frames = Frames(3, FRAME_MAX)
    cases: list[tuple[dict[str, Any], str, str]] = [
        (TYPICAL, "message", "example.text"),
        ({**TYPICAL, "message_id": "publish@1764182400000.18"}, "message", "example.text"),
        ({**TYPICAL, "timestamp": 1764182401}, "message", "example.text"),
        ({**TYPICAL, "application_headers": {"a": 1}}, "message", "example.text"),
        ({**TYPICAL, "application_headers": {"a": True}}, "message", "example.text"),  # not 1
        ({**TYPICAL, "application_headers": {"a": 1.0}}, "message", "example.text"),
        (TYPICAL, "other", "example.text"),
        (TYPICAL, "message", "example.other"),
    ]
    for _ in range(2):  # the second time round, every part comes from the caches
        for properties, exchange, routing_key in cases:
            expected = amqp_frames(b"body", properties, exchange, routing_key, channel=3)
            assert ours(frames, b"body", properties, exchange, routing_key) == expected


def test_caches_stay_small() -> None:
    frames = Frames(1, FRAME_MAX)
    for second in range(1000):
        frames.publish(b"x", {**TYPICAL, "timestamp": second}, "message", f"key.{second}")
    assert len(frames._properties) <= 64
    assert len(frames._methods) <= 64


def test_what_py_amqp_refuses_we_refuse_alike() -> None:
    unsupported = {**TYPICAL, "application_headers": {"s": bytearray(b"ab")}}
    too_long = {**TYPICAL, "message_id": "m" * 256}
    for properties, error in ((unsupported, FrameSyntaxError), (too_long, struct.error)):
        with pytest.raises(error):
            amqp_frames(b"x", properties)
        with pytest.raises(error):
            ours(Frames(1, FRAME_MAX), b"x", properties)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ({"application_headers": {}, "content_encoding": "binary", "app_id": "a"}, {"app_id": "a"}),
        ({"application_headers": None}, {}),
        ({"priority": 0, "app_id": "a"}, {"app_id": "a"}),
        ({"priority": 5}, {"priority": 5}),
        # Anything meant is kept.
        ({"application_headers": {"k": 1}}, {"application_headers": {"k": 1}}),
        ({"content_encoding": "utf-8"}, {"content_encoding": "utf-8"}),
    ],
)
def test_kombu_s_fillers_are_dropped(given: dict[str, Any], sent: dict[str, Any]) -> None:
    drop_fillers(given)
    assert given == sent
