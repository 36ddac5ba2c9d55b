"""The messages a tick publishes: pure functions, no I/O.

A tick is one firing of a schedule entry at its scheduled time. Its
``message_id`` is derived from the entry's name and that time, so every retry
of the tick, a redelivery after a killed worker, and even a second beat firing
the same tick publish the same id, and a consumer can drop duplicates.

What an entry's messages carry, and where they go, is its ``Recipe``
(``entries.py`` makes one from the entry's ``kwargs``): by default the example's
JSON body, or a body of the entry's own (fixed, or made by a payload function at
publish time), with the entry's headers and AMQP properties.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kombu import serialization
from kombu.exceptions import SerializerNotInstalled

from pubtasks import defaults
from pubtasks.errors import BodyError, kind_of
from pubtasks.ids import message_id

#: The content type of the default body.
CONTENT_TYPE = "application/json"
#: A ``str`` body, unless the entry names a serializer.
TEXT = "text/plain"
#: A ``bytes`` body, unless the entry's properties say otherwise.
BINARY = "application/octet-stream"
#: The serializer of any other body (kombu's registry: json, msgpack, yaml, pickle...).
SERIALIZER = "json"
#: Headers that carry the tick on a message with a body of the entry's own.
NUMBER_HEADER = "x-message-number"
SCHEDULED_HEADER = "x-scheduled-at"


def tick_kwargs(
    kwargs: Mapping[str, Any] | None,
    entry: str,
    scheduled_at: float,
    number: int,
    batch: int,
    *,
    manual: bool = False,
) -> dict[str, Any]:
    """What beat sends a publish task (and a resend sends again): the entry's own
    ``kwargs`` and the tick, whose first number beat allocated."""
    return {
        **(kwargs or {}),
        "entry": entry,
        "scheduled_at": scheduled_at,
        "number": number,
        "batch": batch,
        **({"manual": True} if manual else {}),
    }


@dataclass(frozen=True)
class Body:
    """A message body, encoded, and what it is."""

    data: bytes
    content_type: str
    content_encoding: str | None = None


def encode(value: Any, serializer: str | None = None) -> Body:
    """The body for ``value``, encoded as an entry's ``body`` or a payload's result is.

    Without a serializer, a ``str`` is text/plain in UTF-8 and ``bytes`` go as they
    are (application/octet-stream); anything else, and anything at all when a
    serializer is named, goes through kombu's serialization registry (``json`` by
    default). Raises ``BodyError`` naming the value's type and the serializer.
    """
    if serializer is None:
        if isinstance(value, str):
            return Body(value.encode("utf-8"), TEXT, "utf-8")
        if isinstance(value, bytes | bytearray | memoryview):
            return Body(bytes(value), BINARY)
        serializer = SERIALIZER
    try:
        content_type, content_encoding, data = serialization.dumps(value, serializer=serializer)
    except SerializerNotInstalled as exc:
        raise BodyError(
            f"serializer {serializer!r} is not available ({exc}); use one kombu's registry "
            "has: json and pickle always, msgpack and yaml once their packages are installed"
        ) from None
    except Exception as exc:  # kombu's EncodeError, or whatever the serializer raised
        cause = exc.__cause__ or exc
        raise BodyError(
            f"{serializer} cannot encode {kind_of(value)}: {type(cause).__name__}: {cause}"
        ) from exc
    if isinstance(data, str):
        data = data.encode(content_encoding or "utf-8")
    # kombu says "binary" for a body that is bytes by nature (msgpack, pickle): say nothing.
    encoding = None if content_encoding in (None, "binary") else content_encoding
    return Body(bytes(data), content_type, encoding)


#: A payload function: called with ``entry``, ``scheduled_at``, ``message_number`` and
#: ``message_id``; returns the body (an object, a ``str`` or ``bytes``).
Payload = Callable[..., Any]


@dataclass(frozen=True)
class Recipe:
    """What a schedule entry's messages carry and where they go (see ``entries.py``)."""

    exchange: str = defaults.EXCHANGE
    routing_key: str = defaults.ROUTING_KEY
    body: Body | None = None  # a fixed body of the entry's own, encoded once
    payload: Payload | None = None  # or one made at publish time by this function
    payload_name: str = ""  # its "package.module:function", for reasons and logs
    serializer: str | None = None  # for the payload's result (the fixed body is encoded)
    headers: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)  # AMQP names, checked
    on_return: str = defaults.ON_RETURN  # "retry" a returned message, or "count" it

    @property
    def own_body(self) -> bool:
        """Whether the messages carry the entry's body rather than the example's."""
        return self.body is not None or self.payload is not None

    def make(self, entry: str, scheduled_at: float, out: Outgoing) -> Body:
        """The body of one message: the fixed one, or the payload's result, encoded.

        Raises ``BodyError`` quoting what the payload raised, or why its result
        cannot be encoded.
        """
        if self.payload is None:
            if self.body is None:
                raise ValueError("make() is for a recipe with a body of its own")
            return self.body
        try:
            value = self.payload(
                entry=entry,
                scheduled_at=scheduled_at,
                message_number=out.number,
                message_id=out.message_id,
            )
        except Exception as exc:
            raise BodyError(
                f"payload {self.payload_name} raised {type(exc).__name__}: {exc}"
            ) from exc
        try:
            return encode(value, self.serializer)
        except BodyError as exc:
            raise BodyError(f"payload {self.payload_name} returned a body that {exc}") from exc


@dataclass(frozen=True)
class Outgoing:
    """One message of a tick: the tick publishes ``batch`` of them."""

    index: int
    message_id: str
    number: int


@dataclass(frozen=True)
class Tick:
    """One firing of a schedule entry, as the publish task receives it."""

    entry: str
    scheduled_at: float
    number: int  # the first message number, allocated in Redis by beat once per tick
    batch: int = 1  # messages per tick (PUBLISH_BATCH)
    recipe: Recipe = Recipe()
    text: str | None = None  # the default body's "text"; by default the example's sentence
    manual: bool = False  # fired by hand (``pubtasks schedule trigger``), not by the schedule

    @cached_property
    def message_id(self) -> str:
        """The tick's id; with a batch, message i's id is this plus ``.i``."""
        return message_id(self.entry, self.scheduled_at, self.manual)

    @property
    def exchange(self) -> str:
        return self.recipe.exchange

    @property
    def routing_key(self) -> str:
        return self.recipe.routing_key

    @cached_property
    def body_template(self) -> bytes:
        return body_template(self)

    def messages(self) -> list[Outgoing]:
        base = self.message_id
        if self.batch == 1:
            return [Outgoing(0, base, self.number)]
        return [Outgoing(i, f"{base}.{i}", self.number + i) for i in range(self.batch)]


def body(tick: Tick, out: Outgoing, published_at: float) -> bytes:
    """The default JSON body: the example's text plus the number and the two times.

    Formatted from a template made once per tick: this runs once per message, and
    ``json.dumps`` of a dict costs more than the rest of the message together.
    """
    return tick.body_template % (out.number, published_at)


def body_template(tick: Tick) -> bytes:
    """The body with ``%d`` for the message number and ``%r`` for the publish time.

    ``repr`` of a finite float is valid JSON; the strings go through ``json.dumps``.
    """
    text = tick.text or f"The current epoch value is {int(tick.scheduled_at)}"
    return (
        b'{"message_number":%d,"scheduled_at":'
        + repr(float(tick.scheduled_at)).encode()
        + b',"published_at":%r,"entry":'
        + json.dumps(tick.entry).replace("%", "%%").encode()
        + b',"text":'
        + json.dumps(text).replace("%", "%%").encode()
        + b"}"
    )


def properties(tick: Tick, out: Outgoing, published_at: float, own: Body | None) -> dict[str, Any]:
    """The AMQP basic properties of one message (AMQP's names: ``application_headers``,
    ``expiration`` in milliseconds as a string).

    Every message carries its ``message_id``, ``app_id``, ``timestamp`` (the publish
    time, in whole epoch seconds, as AMQP has it), ``content_type`` and
    ``delivery_mode=2`` (persistent in a durable queue). A message with a body of
    the entry's own (``own``) also carries its number and scheduled time in the
    headers ``x-message-number`` and ``x-scheduled-at``: the default body has them
    inside. The entry's own headers and properties come last, and win.
    """
    recipe = tick.recipe
    props: dict[str, Any] = {
        "message_id": out.message_id,
        "app_id": defaults.APP_ID,
        "delivery_mode": 2,
        "timestamp": int(published_at),
        "content_type": CONTENT_TYPE,
    }
    if own is not None:
        props["content_type"] = own.content_type
        if own.content_encoding:
            props["content_encoding"] = own.content_encoding
        props["application_headers"] = {
            **recipe.headers,
            NUMBER_HEADER: out.number,
            SCHEDULED_HEADER: tick.scheduled_at,
        }
    elif recipe.headers:
        props["application_headers"] = dict(recipe.headers)
    if recipe.properties:
        props.update(recipe.properties)
    return props


#: The default message's serialised properties stay within this many bytes (for an
#: entry name of up to 12 characters): longer properties cost RabbitMQ throughput
#: (``pubtasks bench`` measures 64 against 96 bytes; see docs/performance.md).
PROPERTIES_BUDGET = 64
