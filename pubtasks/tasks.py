"""The publish task that beat fires every tick."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from celery import Task, signals
from celery.exceptions import Retry

from pubtasks import defaults, entries, timing
from pubtasks.celery import app
from pubtasks.entries import options_of
from pubtasks.errors import BrokerError, ConfigError, PublishError, StatsUnavailable, TickFailed
from pubtasks.lanes import Parked
from pubtasks.message import Recipe, Tick
from pubtasks.publisher import Publisher
from pubtasks.tries import Later, Tries

log = logging.getLogger(__name__)

#: Recipes a worker process keeps made (``PublishTask.recipe``): more than a burst's entries.
RECIPES_KEPT = 20_000


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
        self._recipes: dict[tuple[str, str], Recipe] = {}

    def recipe(self, entry: str, message: Mapping[str, Any]) -> Recipe:
        """The recipe of ``entry`` from a task's kwargs (``entries.recipe``), checked once
        per process for each different kwargs: a burst has thousands of ticks to make."""
        key = (entry, json.dumps(message, sort_keys=True, default=repr))
        found = self._recipes.get(key)
        if found is None:
            found = entries.recipe(entry, message, self.app.settings.context)
            if len(self._recipes) >= RECIPES_KEPT:
                self._recipes.clear()
            self._recipes[key] = found
        return found

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


#: The options of both publish tasks that pubtasks' promise rests on (``celery.TASK_OPTIONS``).
#: Retries are bounded by TICK_DEADLINE and PUBLISH_ATTEMPTS, not by a count of Celery's
#: (its default is 3; ``retry(max_retries=None)`` means that default).
PROMISED: dict[str, Any] = {
    "base": PublishTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": None,
}


@app.task(name=defaults.TASK_NAME, throws=(PublishError, BrokerError), **PROMISED)  # type: ignore[untyped-decorator]
def publish(
    self: PublishTask,
    *,
    entry: str = defaults.DEFAULT_ENTRY,
    scheduled_at: float | None = None,
    number: int | None = None,
    batch: int | None = None,
    manual: bool = False,
    tries: dict[str, Any] | None = None,
    lane: bool = False,
    **message: Any,
) -> dict[str, Any]:
    """Publish one tick of schedule entry ``entry`` and wait for RabbitMQ's confirm.

    Beat passes ``entry``, ``scheduled_at``, ``number`` (the first) and ``batch``
    (PUBLISH_BATCH), ``manual`` for a tick fired by hand, and the entry's own kwargs
    (``message``: exchange, routing_key, body or payload, serializer, headers,
    properties); a retry or a redelivery of the same tick publishes the same message
    ids and numbers. ``tries`` and ``lane`` are the tick's own, when it was given back
    to wait (``lanes``). Whatever goes wrong, the tick ends confirmed or counted as
    failed with its reason; no worker process sleeps while a tick waits.
    """
    p = self.publisher()
    s = p.settings
    size = s.publish_batch if batch is None else int(batch)
    when = time.time() if scheduled_at is None else float(scheduled_at)
    try:
        first = p.stats.next_number(size) if number is None else int(number)
        tick = Tick(entry=entry, scheduled_at=when, number=first, batch=size, manual=bool(manual))
        try:
            tick = replace(tick, recipe=self.recipe(entry, message))
        except ConfigError as exc:
            log.error("tick %s failed: %s", tick.message_id, exc)
            p.refuse(tick, str(exc))
            raise TickFailed(f"tick {tick.message_id} failed: {exc}") from None
        own = {
            **message,
            "entry": entry,
            "scheduled_at": when,
            "number": first,
            "batch": size,
            **({"manual": True} if manual else {}),
        }
        return Tickwork(self, p, tick, kwargs=own, tries=Tries.of(**(tries or {})), lane=lane).run()
    except StatsUnavailable as exc:
        # Nothing can be counted, so nothing more is published: try the tick again later.
        wait = timing.STATS_RETRY.delay(1)
        if scheduled_at is not None and time.time() + wait > scheduled_at + s.tick_deadline:
            raise
        log.warning("tick of %s at %s: %s; retrying in %g s", entry, scheduled_at, exc, wait)
        raise self.retry(countdown=wait, exc=exc) from exc
    except (PublishError, BrokerError, Retry):
        raise
    except Exception as exc:  # a bug, ours or a library's, before the policy took the tick
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
        log.exception("tick of %s at %s: %s", entry, scheduled_at, reason)
        p.refuse(
            Tick(entry=str(entry), scheduled_at=when, number=0, batch=size, manual=bool(manual)),
            reason,
        )
        raise TickFailed(f"tick of {entry} at {scheduled_at} failed: {reason}") from exc


class Tickwork:
    """One run of the publish task for one tick, with its entry's lane (``lanes``).

    A tick that must wait (``tries.Later``) goes back to Celery with a countdown if it
    holds its entry's lane, and is parked otherwise; either way its worker process is
    free at once. A tick of an entry with a payload function holds the lane while it
    runs, so that a slow payload holds one worker process at most. A tick that was in
    the lane releases it when it ends, and sends the ticks that release wakes.
    """

    def __init__(
        self,
        task: PublishTask,
        publisher: Publisher,
        tick: Tick,
        *,
        kwargs: dict[str, Any],
        tries: Tries,
        lane: bool,
    ) -> None:
        self.task, self.publisher, self.tick = task, publisher, tick
        self.kwargs, self.tries, self.lane = kwargs, tries, lane
        self.payload = tick.recipe.payload is not None

    def run(self) -> dict[str, Any]:
        tick, lanes = self.tick, self.publisher.lanes
        due = time.time() <= tick.scheduled_at + self.publisher.settings.tick_deadline
        if self.payload and due:  # (one past its deadline fails at once, holding nothing)
            if not lanes.hold(tick.entry, self._parked(self.tries), tick.scheduled_at, 0):
                return self._parked_result()
            self.lane = True
        try:
            result = self.publisher.publish_tick(tick, self.tries)
        except Later as later:
            parked = self._parked(later.tries)
            if lanes.hold(tick.entry, parked, tick.scheduled_at, later.delay):
                raise self.task.retry(countdown=later.delay, kwargs=parked.kwargs) from None
            return self._parked_result()
        except (Retry, StatsUnavailable):
            raise  # (still in the lane, if it held it: its retry holds it again)
        except PublishError as exc:
            self._release(wake_all=False)  # failed: the next one holds it
            self._ran("failed", self.tries.attempt, time.time(), str(exc))
            raise
        except BaseException:
            self._release(wake_all=False)  # broken off: the next one holds it
            raise
        self._release(wake_all=not self.payload)
        self._ran(result.outcome, result.attempts, result.confirmed_at)
        return {
            "message_id": result.message_id,
            "message_number": result.message_number,
            "outcome": result.outcome,
            "attempts": result.attempts,
            "confirmed_at": result.confirmed_at,
        }

    def _ran(self, outcome: str, attempts: int, at: float, reason: str = "") -> None:
        """Add how the tick ended to its entry's history (``schedule show``); best effort."""
        try:
            self.publisher.stats.ran_many([_ran(self.tick, outcome, attempts, at, reason)])
        except StatsUnavailable as exc:
            log.debug("tick %s: its history is not kept: %s", self.tick.message_id, exc)

    def _parked(self, tries: Tries) -> Parked:
        kwargs = {**self.kwargs, "lane": True}
        if tries != Tries():
            kwargs["tries"] = tries.as_kwargs()
        return Parked(self.tick.message_id, kwargs)

    def _parked_result(self) -> dict[str, Any]:
        log.info(
            "tick %s: parked until %s's lane is free (another of its ticks holds it)",
            self.tick.message_id,
            self.tick.entry,
        )
        return {"message_id": self.tick.message_id, "outcome": "parked"}

    def _release(self, wake_all: bool) -> None:
        """Done with the lane, if this tick was in it: send the parked ticks it wakes. A
        woken tick that cannot be sent (Celery's transport failing) is parked again."""
        if not self.lane:
            return
        lanes, entry = self.publisher.lanes, self.tick.entry
        woken = lanes.release(entry, self.tick.message_id, wake_all)
        for i, tick in enumerate(woken):
            try:
                options = options_of(self.task.app.conf.beat_schedule, entry)
                self.task.apply_async(kwargs=tick.kwargs, **options)
            except Exception as exc:
                lanes.park_again(entry, woken[i:])
                log.warning(
                    "could not send %d woken tick(s) of %s (%s: %s); parked again, a "
                    "supervisor wakes them",
                    len(woken) - i,
                    entry,
                    type(exc).__name__,
                    exc,
                )
                return


@app.task(name=defaults.GROUP_TASK_NAME, **PROMISED)  # type: ignore[untyped-decorator]
def publish_group(self: PublishTask, *, ticks: list[dict[str, Any]]) -> dict[str, Any]:
    """Publish a group of ticks that fell due at the same instant (``group``).

    ``ticks`` holds each tick's ``publish`` kwargs, as beat would send them one by one.
    They go out through one confirm window; a tick that does not end at its first
    attempt goes on alone, as a ``publish`` task in its entry's lane (``lanes``), so
    that no sick entry holds the others. A redelivered group publishes only what is
    not done. RabbitMQ unreachable or Redis unavailable: the whole group is retried.
    """
    p = self.publisher()
    made: list[tuple[Tick, dict[str, Any]]] = []
    for kwargs in ticks:
        tick = _group_tick(self, p, kwargs)
        if tick is not None:
            made.append((tick, kwargs))
    try:
        ended = p.publish_group([t for t, _ in made])
    except StatsUnavailable as exc:
        wait = timing.STATS_RETRY.delay(1)
        youngest = max((t.scheduled_at for t, _ in made), default=0.0)
        if time.time() + wait > youngest + p.settings.tick_deadline:
            raise  # as a tick alone: nothing can be counted, and its deadline has passed
        log.warning("a group of %d ticks: %s; retrying in %g s", len(made), exc, wait)
        raise self.retry(countdown=wait, exc=exc) from exc
    except Later as unreachable:  # RabbitMQ unreachable: every tick waits, together
        log.warning("a group of %d ticks: %s", len(made), unreachable)
        raise self.retry(countdown=unreachable.delay) from None
    own = {t.message_id: kwargs for t, kwargs in made}
    for tick, later in ended.alone:
        try:
            _go_alone(self, p, tick, own[tick.message_id], later)
        except StatsUnavailable as exc:  # beat's record of it stays: a supervisor resends it
            log.warning("tick %s: not sent on alone (%s); sent again as lost", tick.message_id, exc)
    now = time.time()
    by_id = {t.message_id: t for t, _ in made}
    history = [
        _ran(by_id[r.message_id], r.outcome, r.attempts, r.confirmed_at)
        for r in ended.results
        if r.outcome != "done before"
    ]
    history += [_ran(t, "failed", 1, now, reason) for t, reason in ended.failed]
    try:
        p.stats.ran_many(history)
    except StatsUnavailable as exc:
        log.debug("a group of %d ticks: their history is not kept: %s", len(made), exc)
    return {
        "ticks": len(ticks),
        "ended": len(ended.results),
        "failed": len(ended.failed),
        "alone": len(ended.alone),
    }


def _ran(
    tick: Tick, outcome: str, attempts: int, at: float, reason: str = ""
) -> tuple[str, dict[str, Any]]:
    """A tick that ended, for its entry's history (``schedule show``)."""
    record = {
        "message_id": tick.message_id,
        "outcome": outcome,
        "lateness": round(at - tick.scheduled_at, 6),
        "attempts": attempts,
        "at": at,
        **({"reason": reason} if reason else {}),
    }
    return tick.entry, record


def _group_tick(task: PublishTask, p: Publisher, kwargs: dict[str, Any]) -> Tick | None:
    """The tick of one member of a group, with its recipe; None when its kwargs are
    wrong, and it is counted failed with the reason."""
    message = {k: v for k, v in kwargs.items() if k not in TICK_FIELDS}
    entry = str(kwargs.get("entry", defaults.DEFAULT_ENTRY))
    tick = Tick(
        entry=entry,
        scheduled_at=float(kwargs["scheduled_at"]),
        number=int(kwargs["number"]),
        batch=int(kwargs.get("batch", 1)),
        manual=bool(kwargs.get("manual", False)),
    )
    try:
        return replace(tick, recipe=task.recipe(entry, message))
    except ConfigError as exc:
        log.error("tick %s failed: %s", tick.message_id, exc)
        p.refuse(tick, str(exc))
        return None


#: A tick's own fields among a publish task's kwargs; the rest is its entry's recipe.
TICK_FIELDS = frozenset({"entry", "scheduled_at", "number", "batch", "manual", "tries", "lane"})


def _go_alone(
    task: PublishTask, p: Publisher, tick: Tick, kwargs: dict[str, Any], later: Later
) -> None:
    """Send a tick of a group on its own: a ``publish`` task that goes on from its
    tries after its delay, holding its entry's lane, or parked when another tick of the
    entry holds it. A tick not tried yet (its payload runs alone) is sent as beat
    would have sent it."""
    options = options_of(task.app.conf.beat_schedule, tick.entry)
    if later.tries == Tries():
        try:
            publish.apply_async(kwargs=kwargs, **options)
        except Exception as exc:  # beat's record of it stays: a supervisor sends it again
            log.warning(
                "tick %s: could not be sent on alone (%s); left to be sent again as lost",
                tick.message_id,
                exc,
            )
        return
    parked = Parked(tick.message_id, {**kwargs, "lane": True, "tries": later.tries.as_kwargs()})
    if p.lanes.hold(tick.entry, parked, tick.scheduled_at, later.delay):
        try:
            publish.apply_async(kwargs=parked.kwargs, countdown=later.delay, **options)
        except Exception as exc:  # parked: a supervisor wakes it once the lane expires
            p.lanes.park_again(tick.entry, [parked])
            log.warning("tick %s: could not be sent on alone (%s); parked", tick.message_id, exc)
    else:
        log.info(
            "tick %s: parked until %s's lane is free (another of its ticks holds it)",
            tick.message_id,
            tick.entry,
        )


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close_on_shutdown(**_: Any) -> None:
    """A prefork pool's process closes its own; the solo and threads pools, the worker's."""
    publish.close_publishers()
