"""The beat scheduler: tells each publish task which tick it is.

Celery beat sends a task with the arguments of its schedule entry and
nothing about *when* it was due. This scheduler adds ``entry`` (the entry's
name) and ``scheduled_at`` (the tick's time on the schedule, not the time beat
happened to wake) to every ``pubtasks.publish`` it sends, with ``number``
(the first message number, which it allocates in Redis) and ``batch``. The
task derives the message's stable ``message_id`` from the first two; a retry
or a redelivery of the task carries the same arguments.

It uses Celery's public scheduler hooks only (``setup_schedule``, ``tick``,
``adjust``, ``reserve``, ``apply_async``):

- For ``every`` entries the tick's grid time becomes the entry's ``last_run_at``,
  so the next tick is the next grid point and a late wake-up neither drifts nor
  skips a tick.
- ``apply_async`` only queues the tick; the next ``tick`` sends it. Celery measures
  an entry's wait before it sends and adds it to the time after, so sending
  inside ``apply_async`` would make every wake-up late by the send (two Redis
  round trips). Queued, the send happens after Celery has recorded the next wake.
- ``every`` and ``crontab`` entries become ``Grid`` schedules (a crontab in its
  time zone, exact across DST: ``cron.Cron``), so every tick has an exact time.
- When a beat takes the beat lock (at start, from a holder that died, or after a
  Redis outage that made it stand by) each grid entry goes on as its
  ``catch_up`` option says (``schedule.resume``): from its last tick (``all``, the
  default, within ``catch_up_within``), with only the latest missed tick
  (``latest``), or from the next tick (``none``). The missed ticks it does not fire
  are counted skipped, with their reason, in one compare-and-set of the entry's last
  tick (``Stats.skip``); a tick numbered but not recorded sent (its beat died in
  between) is fired again, with its number.
- A paused entry's ticks are skipped as they are numbered, and ticks asked for by
  hand are fired as they are read (``control``). Ticks a running beat passes over for
  being more than ``catch_up_within`` late are counted skipped as the next tick is
  numbered. So every tick of the schedule is fired or counted skipped, once.
- Message numbers never go back while a beat holds the lock: each numbering passes
  the highest number this beat was given, and a Redis that lost its latest writes
  in a Sentinel failover goes on above it instead of giving those numbers again.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry, SchedulingError

from pubtasks import defaults, pulse, timing
from pubtasks.bounds import OVERLAPS, entry_grid, limits_of
from pubtasks.catalog import Catalog, Loaded, Stored
from pubtasks.control import POLL, Control, Trigger
from pubtasks.entries import catch_up_of, check_schedule, task_options
from pubtasks.errors import ConfigError, StatsUnavailable
from pubtasks.ids import owner_id
from pubtasks.lock import BeatLock
from pubtasks.message import tick_kwargs
from pubtasks.records import ResumePoint, SentTick
from pubtasks.resuming import going_on, summary
from pubtasks.schedule import EARLY_US, US, Grid, Run, jumped
from pubtasks.sent import Sent
from pubtasks.settings import Settings
from pubtasks.specs import entry_of
from pubtasks.stats import Ask, NotFired, Stats
from pubtasks.stopping import signals_held

log = logging.getLogger(__name__)

#: Sent ticks kept to record again until a replica acknowledges them (an hour at 0.04 s).
UNKEPT_MAX = 100_000
#: Entries whose missed ticks beat names one by one when it takes the lock; the rest are
#: counted in one line (10,000 entries back from an outage are not 10,000 lines).
MISSED_LOGGED = 10


def due_time(entry: ScheduleEntry, now: float) -> float:
    """The scheduled time of the tick that ``entry`` is firing now."""
    if isinstance(entry.schedule, Grid):
        tick_at = entry.schedule.plan(entry.last_run_at, now).tick_at
        return now if tick_at is None else tick_at
    remaining: float = entry.schedule.remaining_estimate(entry.last_run_at).total_seconds()
    return now + min(remaining, 0.0)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def changed(entry: ScheduleEntry, **fields: Any) -> ScheduleEntry:
    """A copy of ``entry`` with some of its fields replaced (as Celery's ``entry.next`` makes
    one with a new ``last_run_at``), so that an entry in use is never altered."""
    return type(entry)(**{**dict(entry), **fields})


@dataclass
class Unsent:
    """A tick beat fired but has not handed to Celery's transport yet."""

    entry: ScheduleEntry
    scheduled_at: float
    batch: int
    number: int | None = None
    trigger: Trigger | None = None  # asked for by hand (``pubtasks schedule trigger``)
    window: Run | None = None  # the ticks just before it, passed over for being too late


class Scheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler, tick-aware. Set as ``beat_scheduler`` by default.

    Celery's scheduler logs a tick it cannot send (Redis restarting, say) and moves
    on: the tick is lost. This one keeps such ticks, in order, and sends them, each
    with its own scheduled time, as soon as Redis takes them again; a tick that
    waited past TICK_DEADLINE is then counted as failed by the task.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stats: Stats | None = None
        self._unsent: deque[Unsent] = deque()
        self._lock: BeatLock | None = None
        self._leading = False
        self._renewed = 0.0
        self._control: Control | None = None
        self._polled = 0.0
        self._asked: set[str] = set()  # trigger requests in _unsent
        self._paused: set[str] = set()  # entries seen paused (logged once)
        self._highest = 0  # the highest message number given to this beat (the floor)
        self._unkept: dict[str, float] = {}  # sent records no replica acknowledged yet
        self._kept_at = 0.0
        self._catalog: Catalog | None = None
        self._version: int | None = None  # of the run-time entries read (``catalog``)
        self._watched = 0.0
        self._runtime: dict[str, Stored] = {}  # run-time entries read, taken or refused
        self._finished: set[str] = set()  # entries that had their max_runs
        self._overlapping: set[str] = set()  # entries seen skipping a tick (logged once)
        self._due: list[tuple[float, int, ScheduleEntry]] | None = None  # wake times
        self._order = itertools.count()  # ties in _due go in the order queued
        # entry -> (its options, what numbering needs of them), until the schedule changes
        self._numbering: dict[str, tuple[Any, tuple[int | None, bool, float]]] = {}
        super().__init__(*args, **kwargs)

    @property
    def settings(self) -> Settings:
        """The settings of beat's process (``pubtasks.celery.App.settings``)."""
        settings: Settings = self.app.settings
        return settings

    @property
    def stats(self) -> Stats:
        if self._stats is None:
            s = self.settings
            self._stats = Stats.of(s, retries=2)
        return self._stats

    # -- one beat at a time ---------------------------------------------------------------

    def leading(self) -> bool:
        """Hold (or take) the beat lock; only its holder fires ticks."""
        now = time.monotonic()
        if self._leading and now - self._renewed < timing.LOCK_TTL / 5:
            return True
        if self._lock is None:
            self._lock = BeatLock(
                self.stats, self.stats.keys.beat_lock, timing.LOCK_TTL, owner_id()
            )
        try:
            if self._leading:
                self._leading = self._lock.renew()
                if not self._leading:
                    log.warning("beat: lost the beat lock to %s; standing by", self._lock.holder())
            elif self._lock.acquire():
                log.warning("beat: took the beat lock (%s); firing ticks", self._lock.owner)
                try:
                    began = time.monotonic()
                    self._watch(force=True)
                    self._resume()
                    log.info(
                        "beat: going on with %d entries (read where each left off in %.2f s)",
                        len(self.schedule),
                        time.monotonic() - began,
                    )
                except StatsUnavailable as exc:  # try again at once, or a standby takes over
                    log.warning("beat: cannot read where to go on from (%s); standing by", exc)
                    self._lock.release()
                    return False
                self._leading = True
        except StatsUnavailable as exc:
            if self._leading and now - self._renewed > timing.LOCK_TTL:
                log.warning("beat: cannot renew the beat lock (%s); standing by", exc)
                self._leading = False
            return self._leading
        if self._leading:
            self._renewed = now
        return self._leading

    @property
    def control(self) -> Control:
        if self._control is None:
            self._control = Control(self.stats)
        return self._control

    def _resume(self) -> None:
        """Go on from the last tick of each grid entry by any beat (this one before a
        restart, or a holder that died), as the entry's ``catch_up`` says; count the
        missed ticks not fired as skipped."""
        now = time.time()
        with self.stats.converted():  # for health: ticks from now on
            self.stats.client.set(self.stats.keys.beat_since, now)
        grids = {
            name: entry
            for name, entry in self.schedule.items()
            if isinstance(entry.schedule, Grid) and entry.task == defaults.TASK_NAME
        }
        points = self.stats.resume_points(grids)
        missed = ticks_missed = 0
        waiting: dict[str, list[float]] = {}  # each entry's ticks queued, not by hand
        for u in self._unsent:
            if not u.trigger:
                waiting.setdefault(u.entry.name, []).append(u.scheduled_at)
        for name, entry in grids.items():
            policy = catch_up_of(entry.options).policy
            queued = waiting.get(name, [])
            stored = self._runtime.get(name)
            if stored is not None and points[name] == ResumePoint():
                queued.append(stored.added_at)  # never fired: its ticks since it was added
            for _ in range(3):
                point = points[name]
                again, r = going_on(entry.schedule, policy, point, max(queued, default=None), now)
                if self.stats.skip(name, r.skipped, point, now) is not None:
                    break
                points[name] = self.stats.resume_points([name])[name]  # another beat moved it
            else:
                log.warning("beat: %s: another beat keeps moving its last tick; going on", name)
            self.schedule[name] = changed(entry, last_run_at=at(r.last_run_at))
            if again is not None:
                log.warning(
                    "beat: %s: firing again its tick at %.3f, numbered and unsent", name, again
                )
                self._unsent.append(Unsent(entry, again, self.settings.publish_batch))
            if r.fire is not None:
                self._unsent.append(Unsent(entry, r.fire, self.settings.publish_batch))
            if r.missed:
                missed += 1
                ticks_missed += r.missed
                if missed > MISSED_LOGGED:
                    continue
                handled = [t for t in (point.last_at, point.numbered_at) if t is not None]
                since = max(handled, default=now)
                log.warning(
                    "beat: %s missed %d tick(s) since %s; catch_up=%r: %s; skipped: %s",
                    name,
                    r.missed,
                    at(since).isoformat(),
                    policy,
                    {
                        "all": "firing those within catch_up_within, each with its own time",
                        "latest": "firing the latest" if r.fire else "none within catch_up_within",
                        "none": "going on from the next tick",
                    }[policy],
                    summary(r.skipped),
                )
        if missed > MISSED_LOGGED:
            log.warning(
                "beat: %d entries missed %d tick(s) in all (the first %d are named above); "
                "each goes on as its catch_up says",
                missed,
                ticks_missed,
                MISSED_LOGGED,
            )
        # Celery compares entries without their last_run_at: have it read them again.
        self.populate_heap()

    # -- run-time entries (``catalog``) -----------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.stats)
        return self._catalog

    def _watch(self, force: bool = False) -> None:
        """Read the run-time entries again if their version moved (every ``POLL`` s, or
        at once when ``force``d: taking the lock, or a tick found its entry changed)."""
        now = time.monotonic()
        if not force and now - self._watched < POLL:
            return
        self._watched = now
        try:
            if not force and self.catalog.version() == self._version:
                return
            loaded = self.catalog.load()
        except StatsUnavailable as exc:
            if force:
                raise
            log.debug("beat: cannot read the run-time entries: %s", exc)
            return
        self._take_catalog(loaded)

    def _take_catalog(self, loaded: Loaded) -> None:
        """Make this beat's schedule hold the run-time entries ``loaded``: add, change and
        remove. A change applies from the next tick numbered: ticks waiting unnumbered
        take the new recipe, or are dropped if the entry's times changed or it is gone."""
        changed_any = False
        for name in [n for n in self._runtime if n not in loaded.entries]:
            del self._runtime[name]
            self._finished.discard(name)
            if self.schedule.pop(name, None) is not None:
                log.warning("beat: run-time entry %s was removed; it fires nothing more", name)
            self._rebind(name, None, times_changed=True)
            changed_any = True
        for name, stored in loaded.entries.items():
            old = self._runtime.get(name)
            if old is not None and old.rev == stored.rev:
                continue
            self._runtime[name] = stored
            self._finished.discard(name)
            changed_any = True
            current = self.schedule.get(name)
            try:
                entry = self._runtime_entry(name, stored, current)
            except ConfigError as exc:
                log.warning(
                    "beat: run-time entry %s not taken (version %s): %s", name, stored.rev, exc
                )
                self.schedule.pop(name, None)
                self._rebind(name, None, times_changed=True)
                continue
            times_changed = current is None or current.schedule != entry.schedule
            self.schedule[name] = entry
            self._rebind(name, entry, times_changed)
            what = "added" if old is None else "changed"
            log.warning(
                "beat: run-time entry %s %s (version %s): %s",
                name,
                what,
                stored.rev,
                entry.schedule,
            )
        self._version = loaded.version
        if changed_any:
            self.populate_heap()

    def _runtime_entry(
        self, name: str, stored: Stored, current: ScheduleEntry | None
    ) -> ScheduleEntry:
        """The schedule entry of a run-time entry, checked as a config entry is; it goes on
        from the current one's last tick, or from when it was added or its times changed."""
        spec = entry_of(name, stored.spec, self.app.timezone)
        if name in (self.app.conf.beat_schedule or {}):
            raise ConfigError(f"{name!r} is an entry of beat_schedule in celeryconfig.py")
        serializer = str(self.app.conf.task_serializer or "json")
        check_schedule({name: spec}, self.settings.context, list(self.app.tasks), serializer)
        within = catch_up_of(spec["options"]).within
        grid = entry_grid(name, spec, self.settings.publish_interval, self.app.timezone, within)
        since = stored.added_at
        if current is not None:
            since = current.last_run_at.timestamp()
            if current.schedule != grid:
                since = max(since, stored.changed_at)
        entry: ScheduleEntry = self.Entry(
            name=name,
            task=defaults.TASK_NAME,
            schedule=grid,
            kwargs=spec["kwargs"],
            options=spec["options"],
            last_run_at=at(since),
            app=self.app,
        )
        return entry

    def _rebind(self, name: str, entry: ScheduleEntry | None, times_changed: bool) -> None:
        """The ticks of ``name`` waiting unnumbered take ``entry``; dropped if it is gone,
        or (not those asked for by hand) if its times changed."""
        kept: deque[Unsent] = deque()
        for u in self._unsent:
            if u.entry.name != name or u.number is not None:
                kept.append(u)
            elif entry is not None and (u.trigger is not None or not times_changed):
                u.entry = entry
                kept.append(u)
            elif u.trigger is not None:
                self.control.drop(u.trigger.member)
                self._asked.discard(u.trigger.member)
        self._unsent = kept

    def _take_triggers(self) -> None:
        """Queue one extra tick for each request made by ``pubtasks schedule trigger``."""
        now = time.monotonic()
        if now - self._polled < POLL or now - self._renewed > timing.LOCK_TTL / 5 + POLL:
            return  # read lately, or Redis is failing (the lock's renewal is overdue)
        self._polled = now
        try:
            asked = self.control.triggers()
        except StatsUnavailable as exc:
            log.debug("beat: cannot read the trigger requests: %s", exc)
            return
        for trigger in asked:
            if trigger.member in self._asked:
                continue
            entry = self.schedule.get(trigger.entry)
            if entry is None or entry.task != defaults.TASK_NAME:
                log.warning(
                    "beat: dropped the request to trigger %r: this beat's beat_schedule has no "
                    "such publish entry",
                    trigger.entry,
                )
                self.control.drop(trigger.member)
                continue
            log.warning("beat: triggered by hand: %s, firing %s", trigger.entry, trigger.tick_id)
            self._asked.add(trigger.member)
            self._unsent.append(
                Unsent(entry, trigger.at, self.settings.publish_batch, trigger=trigger)
            )

    def close(self) -> None:
        if self._unsent:  # fired as beat was stopping: send them if Redis takes them
            try:
                self._send_unsent(self.producer)
            except Exception as exc:  # a beat starting within CATCH_UP_WITHIN fires them
                log.warning("beat: %d ticks not sent at shutdown: %s", len(self._unsent), exc)
        if self._lock is not None and self._leading:
            try:
                self._lock.release()  # a standby takes over at once, from the last tick
            except StatsUnavailable:
                log.debug("beat: could not release the beat lock", exc_info=True)
        super().close()

    # -- Celery's scheduler hooks -----------------------------------------------------------

    def setup_schedule(self) -> None:
        super().setup_schedule()
        started = self.app.now()
        interval = self.settings.publish_interval
        for name, entry in list(self.schedule.items()):
            # every() is PUBLISH_INTERVAL; a crontab is in its zone. The first tick is the
            # next one on the schedule (a beat that takes the lock resumes: _resume).
            within = catch_up_of(entry.options).within
            spec = {"schedule": entry.schedule, "options": entry.options}
            grid = entry_grid(name, spec, interval, self.app.timezone, within)
            if grid is not None:
                self.schedule[name] = changed(entry, schedule=grid, last_run_at=started)

    def adjust(self, n: float, drift: float = 0.0) -> float:
        # Celery wakes 10 ms early and then spins until the tick is due; wake on time instead.
        return n

    def tick(self, *args: Any, **kwargs: Any) -> float:
        pulse.stamp()  # alive: the worker's supervisor kills a beat silent for long (pulse)
        if self._unsent:
            self._send_unsent(self.producer)
        if self._unkept:
            self._keep_sent()
        leading = self.leading()
        pulse.stamp()  # again after each call that may wait on Redis, so waits do not add up
        if not leading:
            return 1.0
        self._watch()
        self._take_triggers()
        if self._unsent:
            self._send_unsent(self.producer)
        self._fire_due()
        if self._unsent:
            self._send_unsent(self.producer)
        return min(self._next_wait(), POLL)

    # -- one wake per instant ----------------------------------------------------------------

    def populate_heap(self, *args: Any, **kwargs: Any) -> None:
        """Read the schedule into this beat's own queue of wake times (``_fire_due``)."""
        self._due = []
        self._numbering.clear()
        for entry in self.schedule.values():
            heapq.heappush(self._due, (self._wake_at(entry), next(self._order), entry))

    def _wake_at(self, entry: ScheduleEntry, wait: float | None = None) -> float:
        """When ``entry`` is due next: a grid's exact point after its last tick (so that
        the entries of one instant wake together; ``is_due`` then decides), else
        ``wait`` (or ``is_due``'s) seconds from now."""
        if isinstance(entry.schedule, Grid):
            return entry.schedule.following(entry.last_run_at.timestamp())
        if wait is None:
            _, wait = self._is_due(entry)
        return time.time() + max(wait, 0.0)

    def _is_due(self, entry: ScheduleEntry) -> tuple[bool, float]:
        try:
            due, wait = self.is_due(entry)
        except Exception as exc:  # a broken schedule of another task: look again later
            log.error("beat: cannot tell when %s is due: %s", entry.name, exc)
            return False, float(self.max_interval)
        return bool(due), float(wait)

    def _fire_due(self) -> None:
        """Fire every entry due now, in one call (the entries of a burst together).

        Celery's ``Scheduler.tick`` sends one due task per call and, before each, compares
        the whole schedule with its copy: a burst of n entries due at the same instant
        costs it n calls and O(n²) comparisons (django-celery-beat #650 reports 1000
        entries taking 12-18 s to send). Here the wake times are a heap of our own,
        rebuilt where the schedule changes (``populate_heap``: at start, on taking the
        beat lock, on a run-time change); every entry due is reserved and queued in one
        pass, and the ticks go out in groups (``_send_each``), the first while the
        rest are still being fired."""
        if self._due is None:
            self.populate_heap()
        due = self._due
        assert due is not None
        # Not the entries' identity: the shelve behind Celery's persistent schedule hands
        # out new copies of them after each sync.
        schedule = self.schedule
        fired = 0
        now = time.time()
        while due and due[0][0] <= now + EARLY_US / US:
            _, order, entry = heapq.heappop(due)
            if entry.name not in schedule:
                continue  # removed at run time (the queue is read again then, too)
            grid = entry.schedule
            planned_at = time.time()
            if entry.task == defaults.TASK_NAME and isinstance(grid, Grid):
                plan = grid.plan(entry.last_run_at, planned_at)  # is_due's, once
                is_due, wait = plan.due, plan.wait
            else:
                plan = None
                is_due, wait = self._is_due(entry)
            if not is_due:  # its next tick is later (one too late is passed over): then
                wake = max(time.time() + wait, now + 2 * EARLY_US / US)
                heapq.heappush(due, (wake, order, entry))
                continue
            if plan is not None and plan.tick_at is not None:
                following = self._fire(entry, plan.tick_at, advance=True)
                fired += 1
                # its next point, as the plan found it (the grid's exact time: the same
                # instant for every entry of it, to the microsecond)
                heapq.heappush(due, (planned_at + wait, order, following))
            else:
                following = self.reserve(entry)
                self.apply_entry(entry, producer=self.producer)
                heapq.heappush(due, (self._wake_at(following, wait), order, following))
            if len(self._unsent) >= defaults.GROUP_TICKS:
                self._send_unsent(self.producer)  # the workers start on it meanwhile
                now = time.time()
                due, schedule = self._due, self.schedule  # a run-time change rebuilds them
        if fired > 1:
            log.info("beat: fired %d ticks due by %s", fired, at(now).isoformat())

    def _next_wait(self) -> float:
        """Seconds until the next entry is due (at most ``max_interval``)."""
        if not self._due:
            return float(self.max_interval)
        return max(0.0, min(self._due[0][0] - time.time(), float(self.max_interval)))

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        if not isinstance(entry.schedule, Grid):
            new: ScheduleEntry = super().reserve(entry)
            return new
        tick_at = due_time(entry, time.time())
        new = self.schedule[entry.name] = entry.next(last_run_at=at(tick_at))
        return new

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if entry.task != defaults.TASK_NAME:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        # The tick being fired is the one due now: due_time() of the entry as it was
        # before reserve() (Celery passes that one here, with advance=False).
        self._fire(entry, due_time(entry, time.time()), advance)
        return None

    def _fire(self, entry: ScheduleEntry, tick_at: float, advance: bool) -> ScheduleEntry:
        """Queue the tick of ``entry`` at ``tick_at`` (sent by ``_send_unsent``); with
        ``advance``, the entry goes on from it (as ``reserve``). The entry now."""
        window = None
        if isinstance(entry.schedule, Grid):  # ticks passed over: counted as it is numbered
            window = jumped(entry.schedule, entry.last_run_at.timestamp(), tick_at)
        following = entry
        if advance:
            if isinstance(entry.schedule, Grid):
                following = entry.next(last_run_at=at(tick_at))
                self.schedule[entry.name] = following
            else:
                following = self.reserve(entry)
        if entry.name not in self._finished:
            unsent = Unsent(entry, tick_at, self.settings.publish_batch, window=window)
            self._unsent.append(unsent)
        return following

    def _send_unsent(self, producer: Any) -> None:
        """Send the waiting ticks in order; stop at the first that cannot go yet."""
        with signals_held():
            self._send_each(producer)

    def _send_each(self, producer: Any) -> None:
        """Number the waiting ticks a run at a time (one Lua call for up to
        ``GROUP_TICKS``), then send them: several plain ticks with the same task options
        as one ``publish_group`` task, the rest (a tick alone, by hand, or with a payload
        function) as ``publish`` tasks; stop at the first that cannot go yet."""
        stale = 0
        while self._unsent:
            pulse.stamp()  # a long catch-up is not a hang
            try:
                if self._unsent[0].number is None and not self._number_run():
                    stale += 1
                    if stale > 2:
                        return  # read again next time
                    continue
                run = list(itertools.islice(self._unsent, defaults.GROUP_TICKS))
                run = list(itertools.takewhile(lambda u: u.number is not None, run))
                sent = self._send_run(run, producer)
            except (StatsUnavailable, SchedulingError) as exc:  # Celery wraps transport errors
                tick = self._unsent[0]
                log.warning(
                    "beat: cannot send the tick of %s at %.3f yet (%d waiting): %s",
                    tick.entry.name,
                    tick.scheduled_at,
                    len(self._unsent),
                    exc,
                )
                return
            if not sent:
                return

    def _number_run(self) -> bool:
        """Number the run of unnumbered ticks at the front of the queue, in one call:
        drop those not fired (paused, finished, an overlap). False when a run-time entry
        changed under one: the entries are read again, its ticks rebound or dropped."""
        run = self._unnumbered_run()
        now = time.time()
        asks = []
        for tick in run:
            manual = tick.trigger is not None
            grid = tick.entry.schedule  # a tick by hand is never late
            late = not manual and isinstance(grid, Grid) and grid.late(tick.scheduled_at, now)
            max_runs, overlap, keep = self._numbering_of(tick.entry)
            stored = self._runtime.get(tick.entry.name)
            asks.append(
                Ask(
                    tick.entry.name,
                    tick.scheduled_at,
                    tick.batch,
                    manual=manual,
                    late=late,
                    window=tick.window,
                    rev=stored.rev if stored is not None else "",
                    max_runs=max_runs,
                    overlap=overlap,
                    keep=keep,
                )
            )
        numbers = self.stats.tick_numbers(
            asks, floor=self._highest, deadline=self.settings.tick_deadline
        )
        dropped: set[int] = set()
        stale = False
        for tick, numbered in zip(run, numbers, strict=True):
            name = tick.entry.name
            if isinstance(numbered, NotFired):
                if numbered is NotFired.STALE:
                    stale = True
                else:
                    dropped.add(id(tick))
                    self._not_fired(tick, numbered)
            elif numbered is None:  # paused: skipped, as if it had not fallen due
                dropped.add(id(tick))
                if name not in self._paused:
                    log.warning("beat: %s is paused; skipping its ticks", name)
                    self._paused.add(name)
            else:
                tick.number = numbered
                self._highest = max(self._highest, numbered + tick.batch - 1)
                if name in self._paused:
                    log.warning("beat: %s is resumed; firing its ticks again", name)
                    self._paused.discard(name)
        if dropped:
            self._unsent = deque(u for u in self._unsent if id(u) not in dropped)
        if stale:
            self._watch(force=True)  # rebinds or drops the stale ticks
        return not stale

    def _unnumbered_run(self) -> list[Unsent]:
        """The unnumbered ticks at the front of the queue, at most ``GROUP_TICKS``, and
        one per entry: an entry's next tick is numbered once the one before it was sent
        and recorded. A beat that takes the lock fires again only an entry's latest tick
        numbered (``resuming``): earlier ones numbered and never sent would be lost."""
        run: list[Unsent] = []
        names: set[str] = set()
        for u in itertools.islice(self._unsent, defaults.GROUP_TICKS):
            if u.number is not None or u.entry.name in names:
                break
            names.add(u.entry.name)
            run.append(u)
        return run

    def _numbering_of(self, entry: ScheduleEntry) -> tuple[int | None, bool, float]:
        """An entry's max_runs, overlap skipping and catch-up window, made once per
        options (a burst asks for thousands of entries' at once)."""
        found = self._numbering.get(entry.name)
        if found is None or found[0] != entry.options:
            limits = limits_of(entry.options, entry.schedule)
            skip = limits.overlap != OVERLAPS[0]
            found = (entry.options, (limits.max_runs, skip, catch_up_of(entry.options).within))
            self._numbering[entry.name] = found
        return found[1]

    def _send_run(self, run: list[Unsent], producer: Any) -> bool:
        """Send numbered ticks (in groups where they can go together) and record them
        sent; False when one could not be sent (those sent before it are recorded)."""
        groups: dict[str, list[Unsent]] = {}
        units: list[list[Unsent]] = []
        for tick in run:
            if tick.trigger is not None or "payload" in (tick.entry.kwargs or {}):
                units.append([tick])
                continue
            options = task_options(tick.entry.options)
            key = json.dumps(options, sort_keys=True, default=repr) if options else ""
            if key not in groups:
                groups[key] = []
                units.append(groups[key])
            groups[key].append(tick)
        sent: list[Unsent] = []
        try:
            for unit in units:
                if len(unit) == 1:
                    self._send_one(unit[0], producer)
                else:
                    self._send_group(unit, producer)
                sent += unit
        finally:
            self._record_sent(sent)
        return True

    def _send_one(self, tick: Unsent, producer: Any) -> None:
        assert tick.number is not None
        kwargs = tick_kwargs(
            tick.entry.kwargs,
            tick.entry.name,
            tick.scheduled_at,
            tick.number,
            tick.batch,
            manual=tick.trigger is not None,
        )
        options = task_options(tick.entry.options)
        entry = changed(tick.entry, kwargs=kwargs, options=options)
        super().apply_async(entry, producer=producer, advance=False)

    def _send_group(self, ticks: list[Unsent], producer: Any) -> None:
        """One ``publish_group`` task message for ``ticks`` (``group``)."""
        members = []
        for tick in ticks:
            assert tick.number is not None
            own = tick_kwargs(
                tick.entry.kwargs, tick.entry.name, tick.scheduled_at, tick.number, tick.batch
            )
            members.append(own)
        options = task_options(ticks[0].entry.options)
        # What the task message's header and Celery's logs show of its kwargs; Celery's
        # own (saferepr of them all) costs a burst more than the rest of the send.
        shown = f"{{'ticks': [{len(members)} ticks, the first of {ticks[0].entry.name!r}]}}"
        try:
            self.app.send_task(
                defaults.GROUP_TASK_NAME,
                kwargs={"ticks": members},
                producer=producer,
                kwargsrepr=shown,
                **options,
            )
        except Exception as exc:  # as Celery's apply_async wraps a transport error
            raise SchedulingError(f"Couldn't apply scheduled task: {exc!r}") from exc

    def _record_sent(self, sent: list[Unsent]) -> None:
        """Take ``sent`` off the queue, and record them sent in one write: where the next
        holder of the beat lock goes on from."""
        if not sent:
            return
        gone = {id(u) for u in sent}
        self._unsent = deque(u for u in self._unsent if id(u) not in gone)
        now = time.time()
        records = []
        for tick in sent:
            assert tick.number is not None
            member = None if tick.trigger is None else tick.trigger.member
            records.append(
                Sent(tick.entry.name, tick.scheduled_at, tick.number, tick.batch, member)
            )
        try:
            kept = self.stats.ledger.record_many(records, now)
        except StatsUnavailable:
            log.debug("beat: could not record %d tick(s) as sent", len(records))
            kept = False
        if not kept:  # a failover could lose the records and the task messages: again
            for r in records:
                manual = r.trigger is not None
                member = SentTick.member_of(r.entry, r.scheduled_at, r.number, r.batch, manual)
                self._unkept[member] = now
        for r in records:
            if r.trigger is not None:
                self._asked.discard(r.trigger)

    def _not_fired(self, tick: Unsent, why: NotFired) -> None:
        """A tick that got no number and is dropped: say why, once per entry."""
        name = tick.entry.name
        if why is NotFired.FINISHED:
            if name not in self._finished:
                log.warning("beat: %s had its max_runs; it is finished and fires no more", name)
            self._finished.add(name)
        elif name not in self._overlapping:
            log.warning(
                "beat: %s: skipping a tick while its previous one is unsettled (overlap "
                "'skip'; counted skipped_overlap)",
                name,
            )
            self._overlapping.add(name)

    def _keep_sent(self) -> None:
        """Record again the ticks sent whose record no replica has acknowledged, until one
        does: once a second while the replication holds writes, then every
        ``REPLICA_RECHECK`` (a replica away costs a 0.5 s WAIT each time). A failover
        that lost a tick's task message and its record would lose the tick; with its
        record kept, a supervisor sends it again (``supervision.reconcile``). At most
        ``UNKEPT_MAX`` are kept, the oldest dropped first, with one line."""
        every = 1.0 if self.stats.replication.holding() else timing.REPLICA_RECHECK
        if time.monotonic() - self._kept_at < every:
            return
        self._kept_at = time.monotonic()
        if len(self._unkept) > UNKEPT_MAX:
            dropped = len(self._unkept) - UNKEPT_MAX
            for member in list(self._unkept)[:dropped]:
                del self._unkept[member]
            log.warning(
                "beat: %d sent tick(s) no Redis replica acknowledged are no longer kept to "
                "record again (the oldest; at most %d are kept)",
                dropped,
                UNKEPT_MAX,
            )
        try:
            if self.stats.ledger.keep(self._unkept):
                self._unkept.clear()
        except StatsUnavailable as exc:
            log.debug("beat: cannot record again %d sent tick(s) yet: %s", len(self._unkept), exc)
