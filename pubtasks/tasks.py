"""The publish task that beat fires every tick."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Task

from pubtasks import defaults, settings
from pubtasks.app import app
from pubtasks.errors import BrokerError, PublishError, StatsUnavailable
from pubtasks.message import Tick
from pubtasks.publisher import Publisher
from pubtasks.stats import Stats

log = logging.getLogger(__name__)

_publisher: Publisher | None = None
_owner_pid = 0
_last_reap = 0.0


def publisher() -> Publisher:
    """This worker process's publisher, created on first use (after the pool forked)."""
    global _publisher, _owner_pid  # noqa: PLW0603 - one connection per worker process
    if _publisher is None or _owner_pid != os.getpid():
        s = settings.current()
        _publisher = Publisher(s, Stats.from_url(s.redis_url, s.stats_prefix))
        _owner_pid = os.getpid()
    return _publisher


def close_publisher() -> None:
    """Close this process's connection (worker shutdown)."""
    global _publisher  # noqa: PLW0603
    if _publisher is not None and _owner_pid == os.getpid():
        _publisher.close()
    _publisher = None


def reap_abandoned(p: Publisher, now: float) -> None:
    """Now and then, count publishes left pending by a dead publisher as unconfirmed.

    A live publisher settles every publish within CONFIRM_TIMEOUT, so anything
    pending much longer belongs to a process that was killed mid-publish.
    """
    global _last_reap  # noqa: PLW0603
    older_than = 2 * p.settings.confirm_timeout + 10
    if now - _last_reap < older_than / 2:
        return
    _last_reap = now
    reaped = p.stats.reap(older_than, now)
    if reaped:
        log.warning("counted %d publishes left pending by a dead publisher as unconfirmed", reaped)


@app.task(  # type: ignore[untyped-decorator]
    name=defaults.TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    throws=(PublishError, BrokerError),
)
def publish(
    self: Task,
    *,
    entry: str = defaults.DEFAULT_ENTRY,
    scheduled_at: float | None = None,
    routing_key: str | None = None,
    number: int | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Publish one tick of schedule entry ``entry`` and wait for RabbitMQ's confirm.

    Beat passes ``entry``, ``scheduled_at``, ``number`` (the first) and ``batch``
    (PUBLISH_BATCH); a retry or a redelivery of the same tick publishes the same
    message ids and numbers.
    """
    p = publisher()
    size = p.settings.publish_batch if batch is None else int(batch)
    try:
        tick = Tick(
            entry=entry,
            scheduled_at=time.time() if scheduled_at is None else float(scheduled_at),
            routing_key=routing_key or p.settings.routing_key,
            number=p.stats.next_number(size) if number is None else int(number),
            batch=size,
        )
        reap_abandoned(p, time.time())
        result = p.publish_tick(tick)
    except StatsUnavailable as exc:
        # Nothing can be counted, so nothing more is published: try the tick again later.
        if scheduled_at is not None and time.time() + 1 > scheduled_at + p.settings.tick_deadline:
            raise
        log.warning("tick of %s at %s: %s; retrying in 1 s", entry, scheduled_at, exc)
        raise self.retry(countdown=1, max_retries=None, exc=exc) from exc
    return {
        "message_id": result.message_id,
        "message_number": result.message_number,
        "outcome": result.outcome,
        "attempts": result.attempts,
        "confirmed_at": result.confirmed_at,
    }
