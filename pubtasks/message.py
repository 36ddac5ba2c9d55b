"""The message a tick publishes: pure functions, no I/O.

A tick is one firing of a schedule entry at its scheduled time. Its
``message_id`` is derived from the entry's name and that time, so every retry
of the tick, a redelivery after a killed worker, and even a second beat firing
the same tick publish the same id, and a consumer can drop duplicates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pubtasks import defaults


def message_id(entry: str, scheduled_at: float) -> str:
    """The stable id of a tick: the entry's name and its scheduled time in milliseconds."""
    return f"{entry}@{round(scheduled_at * 1000)}"


def scheduled_at_of(message_id: str) -> float:
    """The scheduled time back from a message id (``<entry>@<ms>`` or ``<entry>@<ms>.<i>``)."""
    return int(message_id.rsplit("@", 1)[1].split(".", maxsplit=1)[0]) / 1000


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
    routing_key: str
    number: int  # the first message number, allocated in Redis by beat once per tick
    batch: int = 1  # messages per tick (PUBLISH_BATCH)
    text: str | None = None  # the body's "text"; by default the example's sentence

    @property
    def message_id(self) -> str:
        """The tick's id; with a batch, message i's id is this plus ``.i``."""
        return message_id(self.entry, self.scheduled_at)

    @cached_property
    def body_template(self) -> bytes:
        return body_template(self)

    def messages(self) -> list[Outgoing]:
        base = self.message_id
        if self.batch == 1:
            return [Outgoing(0, base, self.number)]
        return [Outgoing(i, f"{base}.{i}", self.number + i) for i in range(self.batch)]


def body(tick: Tick, out: Outgoing, published_at: float) -> bytes:
    """The JSON body: the example's text plus the number and the two times.

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


def properties(out: Outgoing) -> dict[str, Any]:
    """AMQP basic properties for kombu's ``Producer.publish`` (with ``CONTENT_TYPE``).

    ``delivery_mode=2`` makes the message persistent in a durable queue.

    Only properties that carry meaning are sent. RabbitMQ takes a message whose
    serialised properties fit in ``PROPERTIES_BUDGET`` bytes markedly faster
    (seen on RabbitMQ 3.10; 66 bytes is already the slow case), so there is no
    ``timestamp`` (the body has ``published_at``, to the millisecond) and no
    ``content_encoding`` (JSON is UTF-8, RFC 8259). That leaves room for a
    ``message_id`` of ``MESSAGE_ID_ROOM`` bytes: an entry name of 15 characters
    with batch ids up to ``.9999``.
    """
    return {
        "message_id": out.message_id,
        "app_id": defaults.APP_ID,
        "delivery_mode": 2,
    }


CONTENT_TYPE = "application/json"
#: What RabbitMQ handles fastest: the serialised properties of one message, in bytes.
PROPERTIES_BUDGET = 64
#: The longest message_id that keeps the properties within the budget.
MESSAGE_ID_ROOM = 34
