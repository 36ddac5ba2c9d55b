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
from pubtasks.schedule import Grid, Run, jumped
from pubtasks.settings import Settings
from pubtasks.specs import entry_of
from pubtasks.stats import NotFired, Stats
from pubtasks.stopping import signals_held

log = logging.getLogger(__name__)

#: Sent ticks kept to record again until a replica acknowledges them (an hour at 0.04 s).
UNKEPT_MAX = 100_000


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
                    self._watch(force=True)
                    self._resume()
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
        for name, entry in grids.items():
            policy = catch_up_of(entry.options).policy
            queued = [
                u.scheduled_at for u in self._unsent if u.entry.name == name and not u.trigger
            ]
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
        wait: float = super().tick(*args, **kwargs)  # 0 when it fired: sent on the next call
        return min(wait, POLL)

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
        tick_at = due_time(entry, time.time())
        window = None
        if isinstance(entry.schedule, Grid):  # ticks passed over: counted as it is numbered
            window = jumped(entry.schedule, entry.last_run_at.timestamp(), tick_at)
        if advance:
            self.reserve(entry)
        if entry.name not in self._finished:
            unsent = Unsent(entry, tick_at, self.settings.publish_batch, window=window)
            self._unsent.append(unsent)
        return None

    def _send_unsent(self, producer: Any) -> None:
        """Send the waiting ticks in order; stop at the first that cannot go yet."""
        with signals_held():
            self._send_each(producer)

    def _send_each(self, producer: Any) -> None:
        while self._unsent:
            pulse.stamp()  # a long catch-up is not a hang
            tick = self._unsent[0]
            name, manual = tick.entry.name, tick.trigger is not None
            try:
                if tick.number is None:
                    grid = tick.entry.schedule  # a tick by hand is never late
                    late = (
                        not manual
                        and isinstance(grid, Grid)
                        and grid.late(tick.scheduled_at, time.time())
                    )
                    limits = limits_of(tick.entry.options, tick.entry.schedule)
                    stored = self._runtime.get(name)
                    numbered = self.stats.tick_number(
                        name,
                        tick.scheduled_at,
                        tick.batch,
                        manual=manual,
                        late=late,
                        window=tick.window,
                        floor=self._highest,
                        keep=catch_up_of(tick.entry.options).within,
                        rev=stored.rev if stored is not None else "",
                        max_runs=limits.max_runs,
                        overlap=limits.overlap != OVERLAPS[0],
                        deadline=self.settings.tick_deadline,
                    )
                    if isinstance(numbered, NotFired):
                        if not self._not_fired(tick, numbered):
                            return
                        continue
                    tick.number = numbered
                    if tick.number is not None:
                        self._highest = max(self._highest, tick.number + tick.batch - 1)
                    if tick.number is None:  # paused: skipped, as if it had not fallen due
                        self._unsent.popleft()
                        if name not in self._paused:
                            log.warning("beat: %s is paused; skipping its ticks", name)
                            self._paused.add(name)
                        continue
                    if name in self._paused:
                        log.warning("beat: %s is resumed; firing its ticks again", name)
                        self._paused.discard(name)
                kwargs = tick_kwargs(
                    tick.entry.kwargs,
                    name,
                    tick.scheduled_at,
                    tick.number,
                    tick.batch,
                    manual=manual,
                )
                options = task_options(tick.entry.options)
                entry = changed(tick.entry, kwargs=kwargs, options=options)
                super().apply_async(entry, producer=producer, advance=False)
            except (StatsUnavailable, SchedulingError) as exc:  # Celery wraps transport errors
                log.warning(
                    "beat: cannot send the tick of %s at %.3f yet (%d waiting): %s",
                    tick.entry.name,
                    tick.scheduled_at,
                    len(self._unsent),
                    exc,
                )
                return
            self._unsent.popleft()
            member = None if tick.trigger is None else tick.trigger.member
            now = time.time()
            try:  # sent: where the next holder of the beat lock goes on from
                kept = self.stats.ledger.record(
                    name, tick.scheduled_at, tick.number, tick.batch, now, trigger=member
                )
            except StatsUnavailable:
                log.debug("beat: could not record the tick of %s as sent", name)
                kept = False
            if not kept:  # a failover could lose the record and the task message: again
                sent = SentTick.member_of(name, tick.scheduled_at, tick.number, tick.batch, manual)
                self._unkept[sent] = now
            if member is not None:
                self._asked.discard(member)

    def _not_fired(self, tick: Unsent, why: NotFired) -> bool:
        """A tick that got no number: drop it (True: go on with the next one), or, for a
        run-time entry that changed, read the entries again and try it then (False)."""
        name = tick.entry.name
        if why is NotFired.STALE:
            self._watch(force=True)  # rebinds or drops this tick
            return False
        self._unsent.popleft()
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
        return True

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
