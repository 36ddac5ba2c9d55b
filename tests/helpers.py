"""Shared helpers for the integration tests: waiting, draining a queue, a real worker."""

from __future__ import annotations

import base64
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu.connection import Connection

from pubtasks.bench.services import rabbitmqctl
from pubtasks.bench.worker import Worker, celery_isolation
from pubtasks.bench.worker import write_config as write_worker_config
from pubtasks.message import Tick, scheduled_at_of
from pubtasks.waiting import wait_for

__all__ = ["Worker", "celery_isolation", "rabbitmqctl"]

RABBIT = os.environ.get("PUBTASKS_TEST_RABBIT", "amqp://guest:guest@127.0.0.1:5672")
REDIS = os.environ.get("PUBTASKS_TEST_REDIS", "redis://127.0.0.1:6379")
#: The Redis database the tests use; every key they write is under their own prefix too.
REDIS_DB = int(os.environ.get("PUBTASKS_TEST_REDIS_DB", "14"))

#: The test worker's configuration, before what a test adds and the isolation settings.
CONFIG = """
from pubtasks.schedule import every

beat_schedule = {"publish-text": {"task": "pubtasks.publish", "schedule": every()}}
CONFIRM_TIMEOUT = 2.0
"""


@dataclass
class Received:
    """One message taken off a queue."""

    body: dict[str, Any]
    properties: dict[str, Any]


def drain(amqp_url: str, queue: str) -> list[Received]:
    """Take every message off ``queue`` (basic.get, auto-ack) in arrival order, as JSON."""
    return [Received(json.loads(m.body), m.properties) for m in take(amqp_url, queue)]


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


def queue_depth(amqp_url: str, queue: str) -> int:
    with Connection(amqp_url) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)


def write_config(directory: Path, prefix: str, extra: str = "") -> None:
    """A celeryconfig.py for a test worker: its own stats prefix and Celery keys."""
    write_worker_config(directory, prefix, CONFIG + textwrap.dedent(extra))


def connections(vhost: str) -> list[str]:
    """The AMQP connections on ``vhost`` that RabbitMQ has not closed (closed ones linger
    in the list until their client reads the close)."""
    out = rabbitmqctl("list_connections", "--no-table-headers", "vhost", "name", "state")
    rows = [line.split("\t") for line in out.splitlines()]
    return [row[1] for row in rows if len(row) == 3 and row[0] == vhost and row[2] != "closed"]


def close_connections(vhost: str) -> int:
    """Have RabbitMQ close every connection on ``vhost``; wait until those are closed.

    Returns how many there were. New connections (a publisher reconnecting) may follow.
    """
    before = set(connections(vhost))
    rabbitmqctl("close_all_connections", "-p", vhost, "pubtasks test: forced close")
    wait_for(lambda: not before & set(connections(vhost)), 10, f"{vhost} to close them", 0.2)
    return len(before)


@dataclass
class Row:
    """One scenario's figures, as the reliability table shows them."""

    scenario: str
    scheduled: int
    delivered: int
    duplicates: int
    lost: int
    failed: int
    reason: str
    invariant: bool
    recovery_s: float | None
    notes: str = ""
    received: int = 0
    unconfirmed: int = 0
    queued: int = 0
    ids: set[str] | None = None


def tally(
    scenario: str,
    amqp_url: str,
    stats: Any,
    interval: float | None,
    recovery_s: float | None,
    notes: str = "",
) -> Row:
    """Consume queue ``text`` and read Redis: account for every message beat scheduled.

    A message is delivered (in the queue), failed (counted, with a reason) or
    returned (unroutable); anything else is lost. With ``interval``, every grid
    point between the first and the last tick must also be there.
    """
    received = drain(amqp_url, "text")
    snap = stats.snapshot()
    ids = [m.properties["message_id"] for m in received]
    unique = set(ids)
    failed_ids = {
        key.removeprefix(stats.keys.failed(""))
        for key in stats.client.scan_iter(match=stats.keys.failed("*"), count=1000)
    }
    t = snap.totals
    queued = queued_ids(stats.client, stats.keys.prefix)
    known = unique | failed_ids | queued
    lost = snap.last_message_number - len(known) - t.returned
    if interval is not None and unique:
        # Ticks are grid points: every one from the first to the last beat sent must be
        # known. (A number a killed beat allocated for a tick it never sent is not a
        # tick: the next beat fires that grid point again, with a new number.)
        times = sorted({scheduled_at_of(i) for i in known})
        sent = stats.client.get(stats.keys.beat_last("publish-text"))
        last = max(times[-1], float(sent) if sent else 0.0)
        missing = round((last - times[0]) / interval) + 1 - len(times)
        orphans = max(lost, 0)
        lost = missing
        if orphans:
            notes += f"{'; ' if notes else ''}{orphans} message numbers allocated by a killed beat"
    return Row(
        scenario=scenario,
        scheduled=snap.last_message_number,
        delivered=len(unique),
        duplicates=len(ids) - len(unique),
        lost=lost,
        failed=t.failed,
        reason=snap.last_error.get("reason", "") if t.failed else "",
        invariant=t.invariant_holds and t.pending == 0,
        recovery_s=recovery_s,
        notes=notes,
        received=len(ids),
        unconfirmed=t.unconfirmed,
        queued=len(queued),
        ids=unique,
    )


def queued_ids(client: Any, prefix: str) -> set[str]:
    """Message ids of ticks still in Celery's Redis queue (fired, not yet run: a worker
    stopped before it took them; the next worker publishes them)."""
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


def record(row: Row) -> None:
    """Append the row to $PUBTASKS_RELIABILITY_OUT (JSON lines), when it is set."""
    out = os.environ.get("PUBTASKS_RELIABILITY_OUT")
    if not out:
        return
    fields = {k: v for k, v in row.__dict__.items() if k != "ids"}
    with open(out, "a") as f:
        f.write(json.dumps(fields) + "\n")
