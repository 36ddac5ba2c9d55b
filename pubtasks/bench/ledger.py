"""The account of a run: every message number beat allocated, and where it went.

The fault suite (``tests/helpers.tally``) and ``scripts/chaos`` end the same way:
consume the queue, read Redis, and account for each number. A number is
delivered (its message is in the queue), or failed (counted, with its reason:
the failed marker keeps both); anything else is lost. (A returned message is
published again until a queue takes it or it fails: a return is not an end.)
Apart from numbers, every point of the tick grid between the first and the last
tick must have a message.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection

from pubtasks.message import NUMBER_HEADER, Tick, scheduled_at_of
from pubtasks.stats import Stats


@dataclass
class Raw:
    """One message taken off a queue, its body as it came."""

    body: bytes
    properties: dict[str, Any]


def take(amqp_url: str, queue: str) -> list[Raw]:
    """Take every message off ``queue`` (basic.get, auto-ack) as it is, in arrival order."""
    got: list[Raw] = []
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        while True:
            msg = channel.basic_get(queue, no_ack=True)
            if msg is None:
                return got
            body = msg.body  # py-amqp decodes a body that names its content_encoding
            if isinstance(body, str):
                body = body.encode(msg.properties["content_encoding"])
            got.append(Raw(bytes(body), dict(msg.properties)))


def number_of(m: Raw) -> int:
    """A delivered message's number: in the default body, or in its header."""
    headers = m.properties.get("application_headers") or {}
    if NUMBER_HEADER in headers:
        return int(headers[NUMBER_HEADER])
    return int(json.loads(m.body)["message_number"])


def failed_markers(stats: Stats) -> dict[str, tuple[int, str]]:
    """Each message counted failed: message_id -> (number, reason)."""
    found = {}
    for key in stats.client.scan_iter(match=stats.keys.failed("*"), count=1000):
        number, _, reason = str(stats.client.get(key) or "0").partition(" ")
        found[key.removeprefix(stats.keys.failed(""))] = (int(number), reason)
    return found


def queued_ids(client: Any, prefix: str) -> set[str]:
    """Message ids of the ticks still in Celery's Redis queue or reserved (``unacked``)."""
    raw = client.lrange(f"{prefix}celery", 0, -1) + [
        json.loads(v)[0] for v in client.hvals(f"{prefix}unacked")
    ]
    ids: set[str] = set()
    for item in raw:
        message = json.loads(item) if isinstance(item, str | bytes) else item
        kwargs = json.loads(base64.b64decode(message["body"]))[1]
        tick = Tick(kwargs["entry"], kwargs["scheduled_at"], 0, int(kwargs.get("batch") or 1))
        ids.update(out.message_id for out in tick.messages())
    return ids


@dataclass
class Ledger:
    """Where every number went."""

    scheduled: int  # numbers allocated
    delivered: int  # distinct message_ids consumed
    received: int  # messages consumed, duplicates included
    lost: int  # numbers neither delivered nor failed
    missed: int | None  # grid points without a message (None: no fixed grid)
    collisions: int  # numbers delivered under more than one message_id (must be 0)
    stranded: int  # ticks still queued or reserved in Redis
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    lost_numbers: list[int] = field(default_factory=list)  # neither delivered nor failed

    @property
    def duplicates(self) -> int:
        return self.received - self.delivered

    @property
    def reasons(self) -> Counter[str]:
        return Counter(reason for _, reason in self.failed.values())


def account(received: list[Raw], stats: Stats, interval: float | None, entry: str) -> Ledger:
    """The ledger of ``received`` (everything consumed) against what Redis says."""
    snap = stats.snapshot()
    failed = failed_markers(stats)
    ids = [m.properties["message_id"] for m in received]
    unique = set(ids)
    by_number: dict[int, set[str]] = {}
    for m in received:
        by_number.setdefault(number_of(m), set()).add(m.properties["message_id"])
    numbers = by_number.keys() | {number for number, _ in failed.values()}
    unaccounted = sorted(set(range(1, snap.last_message_number + 1)) - numbers)
    lost = len(unaccounted)  # a return is published again (on_return="retry"), not an end
    missed = None
    if interval is not None and unique:
        times = sorted({scheduled_at_of(i) for i in unique | failed.keys()})
        sent = stats.client.get(stats.keys.beat_last(entry))
        last = max(times[-1], float(sent) if sent else 0.0)
        missed = round((last - times[0]) / interval) + 1 - len(times)
    return Ledger(
        scheduled=snap.last_message_number,
        delivered=len(unique),
        received=len(ids),
        lost=lost,
        missed=missed,
        collisions=sum(1 for found in by_number.values() if len(found) > 1),
        stranded=len(queued_ids(stats.client, stats.keys.prefix)),
        failed=failed,
        ids=unique,
        lost_numbers=unaccounted,
    )
