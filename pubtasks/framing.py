"""basic.publish frames, byte for byte as py-amqp writes them: pure logic, no I/O.

An AMQP 0-9-1 publish is three kinds of frame (spec section 4.2.3): the
basic.publish method frame, a content header frame carrying the message
properties, and the body in frames of at most ``frame_max - 8`` bytes. Each
frame is ``type, channel, size, payload, 0xCE``.

py-amqp builds all of it again for every message. Profiling the batch path
showed that this, and above all serialising the properties, was most of the
time a publish takes. A tick's messages share everything but a few bytes:
the method frame is the same for one exchange and routing key, and the
properties differ only in ``message_id`` (and ``timestamp`` once a second).
So ``Frames`` serialises once per distinct value and splices the
``message_id`` into the cached bytes; what goes on the wire is identical
(``tests/test_framing.py`` compares it with py-amqp's writer). Only py-amqp's
public encoder (``amqp.serialization.dumps``) and its spec constants are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from struct import pack
from typing import Any

from amqp import spec
from amqp.serialization import dumps

FRAME_END = b"\xce"
METHOD, HEADER, BODY = 1, 2, 3

#: Stands in for the message_id when the properties are serialised once: a shortstr
#: (length octet, then the bytes) that no real property is likely to contain.
_PLACEHOLDER = b"\x00pubtasks:message-id\x00"
_MARKER = bytes((len(_PLACEHOLDER),)) + _PLACEHOLDER
_CACHE_SIZE = 64


#: The basic class's content properties, in wire order, with their field types
#: (AMQP 0-9-1, section 1.8): s shortstr, F table, o octet, L 64-bit timestamp.
BASIC_PROPERTIES = (
    ("content_type", "s"),
    ("content_encoding", "s"),
    ("application_headers", "F"),
    ("delivery_mode", "o"),
    ("priority", "o"),
    ("correlation_id", "s"),
    ("reply_to", "s"),
    ("expiration", "s"),
    ("message_id", "s"),
    ("timestamp", "L"),
    ("type", "s"),
    ("user_id", "s"),
    ("app_id", "s"),
    ("cluster_id", "s"),
)


def serialize_properties(properties: Mapping[str, Any]) -> bytes:
    """The property flags and property list of a content header.

    One flag bit per property present, from the highest bit down (14 properties
    fit in one 16-bit word, so the continuation bit stays 0), then the present
    values in order. A value of None counts as absent, as in py-amqp.
    """
    flags, formats, values = 0, [], []
    for bit, (name, kind) in zip(range(15, 1, -1), BASIC_PROPERTIES, strict=True):
        value = properties.get(name)
        if value is not None:
            flags |= 1 << bit
            formats.append(kind)
            values.append(value)
    encoded: bytes = dumps("".join(formats), values)
    return pack(">H", flags) + encoded


_CONTAINERS = (dict, list, tuple)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a value that keeps its type: in a table, True is not 1."""
    kind = value.__class__
    if kind is dict:
        value = tuple([(k, _frozen(v)) for k, v in value.items()])
    elif kind in _CONTAINERS:
        value = tuple([_frozen(v) for v in value])
    return (kind, value)


def cache_key(properties: dict[str, Any]) -> tuple[Any, ...]:
    """Everything but the message_id, hashable (TypeError when a value cannot be)."""
    key = tuple([(k, _frozen(v)) for k, v in properties.items() if k != "message_id"])
    hash(key)
    return key


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


class Frames:
    """Encodes the frames of basic.publish for one channel."""

    def __init__(self, channel: int, frame_max: int) -> None:
        self.channel = channel
        self.chunk = frame_max - 8  # the most body one frame can carry
        self._methods: dict[tuple[str, str, bool, bool], bytes] = {}
        self._properties: dict[Any, tuple[bytes, bytes] | None] = {}

    def publish(
        self,
        body: bytes | str,
        properties: dict[str, Any],
        exchange: str,
        routing_key: str,
        *,
        mandatory: bool = False,
        immediate: bool = False,
    ) -> bytes:
        """Every frame of one basic.publish, ready for the socket."""
        if isinstance(body, str):
            # As py-amqp does: a text body is encoded, and says how, before the header.
            body = body.encode(properties.setdefault("content_encoding", "utf-8"))
        props = self.properties(properties)
        parts = [
            self.method(exchange, routing_key, mandatory, immediate),
            frame(HEADER, self.channel, pack(">HHQ", spec.Basic.CLASS_ID, 0, len(body)) + props),
        ]
        for start in range(0, len(body), self.chunk):
            parts.append(frame(BODY, self.channel, body[start : start + self.chunk]))
        return b"".join(parts)

    def method(self, exchange: str, routing_key: str, mandatory: bool, immediate: bool) -> bytes:
        """The basic.publish method frame, made once per exchange and routing key."""
        key = (exchange, routing_key, mandatory, immediate)
        encoded = self._methods.get(key)
        if encoded is None:
            arguments = dumps("Bssbb", (0, exchange, routing_key, mandatory, immediate))
            encoded = frame(METHOD, self.channel, pack(">HH", *spec.Basic.Publish) + arguments)
            if len(self._methods) >= _CACHE_SIZE:
                self._methods.clear()
            self._methods[key] = encoded
        return encoded

    def properties(self, properties: dict[str, Any]) -> bytes:
        """The serialised properties: cached bytes around this message's message_id."""
        message_id = properties.get("message_id")
        if not isinstance(message_id, str):
            return serialize_properties(properties)
        raw = message_id.encode("utf-8", "surrogatepass")  # as py-amqp
        try:
            key = cache_key(properties)
            cached = key in self._properties
        except TypeError:  # an unhashable value: nothing to cache
            return serialize_properties(properties)
        if cached:
            halves = self._properties[key]
        else:
            halves = self._split({**properties, "message_id": _PLACEHOLDER.decode()})
            if len(self._properties) >= _CACHE_SIZE:  # timestamp moves on once a second
                self._properties.clear()
            self._properties[key] = halves
        if halves is None or len(raw) > 255:  # let py-amqp say what is wrong
            return serialize_properties(properties)
        before, after = halves
        return b"".join((before, bytes((len(raw),)), raw, after))

    @staticmethod
    def _split(properties: dict[str, Any]) -> tuple[bytes, bytes] | None:
        """The serialised properties either side of the placeholder message_id."""
        template = serialize_properties(properties)
        if template.count(_MARKER) != 1:
            return None
        before, after = template.split(_MARKER)
        return before, after
