"""The publish task that beat fires every tick."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from typing import Any

from celery import Task, signals

from pubtasks import defaults, entries
from pubtasks.celery import app
from pubtasks.errors import BrokerError, ConfigError, PublishError, StatsUnavailable, TickFailed
from pubtasks.message import Tick
from pubtasks.publisher import Publisher

log = logging.getLogger(__name__)


class PublishTask(Task):  # type: ignore[misc]
    """The publish task's class: one publisher for each thread that runs it.

    A publisher is one long-lived connection with one confirm channel, whose delivery
    tags and socket writes cannot be shared, so the prefork pool's processes and the
    threads pool's threads each get their own, made on first use (after the fork).
    """

    def __init__(self) -> None:
        super().__init__()
        self._publishers: dict[tuple[int, int], Publisher] = {}
        self._guard = threading.Lock()

    def publisher(self) -> Publisher:
        """The publisher of this process and thread."""
        key = (os.getpid(), threading.get_ident())
        with self._guard:
            found = self._publishers.get(key)
            if found is None:
                # A forked child inherits its parent's: not its own to use, nor to close.
                self._publishers = {k: p for k, p in self._publishers.items() if k[0] == key[0]}
                found = self._publishers[key] = Publisher(self.app.settings)
        return found

    def close_publishers(self) -> None:
        """Close this process's publishers (the worker process is shutting down)."""
        with self._guard:
            mine = [p for (pid, _), p in self._publishers.items() if pid == os.getpid()]
            self._publishers = {}
        for p in mine:
            p.close()


@app.task(  # type: ignore[untyped-decorator]
    base=PublishTask,
    name=defaults.TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    throws=(PublishError, BrokerError),
)
def publish(
    self: PublishTask,
    *,
    entry: str = defaults.DEFAULT_ENTRY,
    scheduled_at: float | None = None,
    number: int | None = None,
    batch: int | None = None,
    manual: bool = False,
    **message: Any,
) -> dict[str, Any]:
    """Publish one tick of schedule entry ``entry`` and wait for RabbitMQ's confirm.

    Beat passes ``entry``, ``scheduled_at``, ``number`` (the first) and ``batch``
    (PUBLISH_BATCH), ``manual`` for a tick fired by hand, and the entry's own kwargs
    (``message``: exchange, routing_key, body or payload, serializer, headers,
    properties); a retry or a
    redelivery of the same tick publishes the same message ids and numbers.
    Whatever goes wrong, the tick ends confirmed or counted as failed with its reason.
    """
    p = self.publisher()
    s = p.settings
    size = s.publish_batch if batch is None else int(batch)
    when = time.time() if scheduled_at is None else float(scheduled_at)
    try:
        first = p.stats.next_number(size) if number is None else int(number)
        tick = Tick(entry=entry, scheduled_at=when, number=first, batch=size, manual=bool(manual))
        try:
            tick = replace(tick, recipe=entries.recipe(entry, message, s.context))
        except ConfigError as exc:
            log.error("tick %s failed: %s", tick.message_id, exc)
            p.refuse(tick, str(exc))
            raise TickFailed(f"tick {tick.message_id} failed: {exc}") from None
        result = p.publish_tick(tick)
    except StatsUnavailable as exc:
        # Nothing can be counted, so nothing more is published: try the tick again later.
        if scheduled_at is not None and time.time() + 1 > scheduled_at + s.tick_deadline:
            raise
        log.warning("tick of %s at %s: %s; retrying in 1 s", entry, scheduled_at, exc)
        raise self.retry(countdown=1, max_retries=None, exc=exc) from exc
    except (PublishError, BrokerError):
        raise
    except Exception as exc:  # a bug, ours or a library's, before the policy took the tick
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
        log.exception("tick of %s at %s: %s", entry, scheduled_at, reason)
        p.refuse(
            Tick(entry=str(entry), scheduled_at=when, number=0, batch=size, manual=bool(manual)),
            reason,
        )
        raise TickFailed(f"tick of {entry} at {scheduled_at} failed: {reason}") from exc
    return {
        "message_id": result.message_id,
        "message_number": result.message_number,
        "outcome": result.outcome,
        "attempts": result.attempts,
        "confirmed_at": result.confirmed_at,
    }


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close_on_shutdown(**_: Any) -> None:
    """A prefork pool's process closes its own; the solo and threads pools, the worker's."""
    publish.close_publishers()
