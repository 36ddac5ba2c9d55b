"""What pubtasks adds to the Celery worker: it watches the embedded beat, and gives
back the ticks that a dead worker had reserved.

A worker step (``Supervision``) starts two threads in the worker's main process, one
for beat alone (no Redis call can delay it) and one for the rest. Every second they:

- **checks the embedded beat** (``-B``). Celery starts beat as a child process and
  never looks at it again: a beat killed by the OOM killer leaves a worker that
  looks healthy and fires nothing. When beat is gone, the worker logs one line and
  stops, warm, with exit status ``EXIT_BEAT_DIED`` (3), so that its supervisor
  (compose's ``restart:``, systemd's ``Restart=``, Kubernetes) starts it again.
  Why not start beat again inside the worker: that means forking the worker's
  main process while its threads (billiard's pool handlers, this one) may hold
  locks, from a process whose memory was what the OOM killer judged; a fresh
  process is the state we know, and the supervisor counts the restarts. While it
  is down, another ``-B`` worker's beat takes the beat lock within 10 s.
  A beat that stays alive but stops ticking (SIGSTOP, a stuck call) is handled the
  same way once its heartbeat (``pulse``, in memory shared with the beat process)
  has been silent for ``timing.HUNG_AFTER`` seconds: the worker kills it (SIGKILL),
  logs one line and stops with exit status 3.
- **says what it holds** (a heartbeat): the delivery tags of the tasks this worker
  has reserved, in ``worker:<id>``, which expires ``timing.WORKER_TTL`` seconds
  after the last heartbeat (the key layout is in ``keys``).
- **counts abandoned publishes**, every ``timing.SWEEP`` seconds: a publish left
  pending by a process that died mid-publish is counted unconfirmed
  (``Stats.reap``) even when no tick follows to do it, so that a quiet system's
  counters add up.
- **gives back orphans**, every ``timing.SWEEP`` seconds, when Celery's transport
  is Redis: a delivery in the transport's ``unacked`` hash that no live worker has
  held for ``timing.GIVE_BACK_GRACE`` seconds belonged to a worker that died whole
  (SIGKILL, a lost host), or whose ack was lost with its connection. Kombu would
  give it back only after the visibility timeout (an hour); this gives it back
  within about ``timing.WORKER_TTL + timing.GIVE_BACK_GRACE + timing.SWEEP``
  seconds of the death. A tick given back that had been confirmed is recognised
  (``stats`` marks each counted message done) and acked without publishing or
  counting anything.

- **wakes parked ticks whose lane nobody holds**, every ``timing.SWEEP`` seconds: a tick
  that waits for its entry's lane (``lanes``) is parked in Redis, and the lane's
  holder wakes it when it ends; if the holder died, or its lane expired, the
  oldest parked tick is sent again here, and holds the lane.

- **sends lost ticks again**, every ``timing.RECONCILE`` seconds. Beat records each tick it
  sends (``beat:sent``); a tick that, ``timing.RESEND_AFTER`` seconds later, is neither
  done (``stats`` marks each counted message) nor in Celery's queue nor reserved
  was lost in Redis, and is sent again, with its number (a parked tick is not lost).
  The Redis transport pops a task (BRPOP) before it records it as reserved: a worker
  killed between the two takes the message with it (celery/celery#7950, kombu#305);
  so does a Redis killed between the pop and its reply. ``scripts/chaos`` lost 2
  ticks in an hour that way before this.

A stop signal sent to the whole process group (``kill -TERM -PGID``, systemd's
``KillMode=control-group``, Ctrl-C) is kept out of the pool's processes and beat by
``stopping``, which leave it to the main process's warm shutdown.

It touches no library internal: what it needs of Celery's worker state and of the
Redis transport (the reserved requests, the warm stop, the ``unacked`` hash, kombu's
give-back) is asked of the worker seam, ``transport``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery import bootsteps
from kombu.connection import Connection

from pubtasks import defaults, pulse, timing
from pubtasks.accounting import abandoned_after
from pubtasks.catalog import Catalog
from pubtasks.entries import options_of, task_options
from pubtasks.errors import ConfigError
from pubtasks.ids import owner_id
from pubtasks.lanes import Lanes
from pubtasks.message import tick_kwargs
from pubtasks.orphans import Orphans
from pubtasks.records import SentTick
from pubtasks.specs import entry_of
from pubtasks.stats import Stats
from pubtasks.transport import (
    embedded_beat,
    give_back,
    held_tags,
    queued_ticks,
    stop_worker,
    unacked_tags,
    worker_stopping,
)

log = logging.getLogger("pubtasks")

#: The worker's exit status when its embedded beat has died.
EXIT_BEAT_DIED = 3
# The supervisor's durations (``timing``, where their invariants are).


def tick_queues(default: str, beat_schedule: Any) -> set[str]:
    """The queues a tick's task may wait in: Celery's default, and each publish entry's
    own (``options.queue``: a name or a kombu ``Queue``)."""
    queues = {default}
    for spec in (beat_schedule or {}).values():
        queue = (spec.get("options") or {}).get("queue") if isinstance(spec, dict) else None
        if queue is not None:
            queues.add(str(getattr(queue, "name", queue)))
    return queues


class Supervisor:
    """The threads that watch beat, beat the heart and give back orphans."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.app = worker.app
        settings = self.app.settings
        self.stats = Stats.of(settings, retries=0)
        self.abandoned_after = abandoned_after(settings.confirm_timeout)
        self.id = owner_id()
        self.orphans = Orphans(timing.GIVE_BACK_GRACE)
        self.lanes = Lanes(self.stats)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pubtasks-supervisor", daemon=True)
        # Beat is watched by a thread of its own, so that a Redis call of the other one,
        # slow to fail (up to its 5 s socket timeout), does not delay a hung beat's kill.
        self._watch = threading.Thread(target=self._watch_beat, name="pubtasks-beat", daemon=True)
        self._transport: Connection | None = None
        self._last_sweep = 0.0
        self._last_reconcile = 0.0
        self._last_problem = ""
        self._beat_gone = False
        # Made now, before Celery starts the Beat step and forks beat, which inherits it.
        self.pulse = pulse.install()
        self._beat_seen_dead = False

    def start(self) -> None:
        beat = embedded_beat(self.worker)
        self.pulse.stamp()  # beat has just been started: its silence counts from now
        if beat is not None:
            log.info("pubtasks: watching the embedded beat (pid %s)", getattr(beat, "pid", "-"))
        self._thread.start()
        self._watch.start()

    def stop(self) -> None:
        """The worker is stopping, and its beat with it, on purpose. The heartbeat goes
        on until the process exits: the pool may still be finishing ticks, and a worker
        that stopped saying it holds them would have them given back meanwhile. Its
        key expires 10 s after the exit; what it held is acked or back in the queue."""
        self._stopping.set()

    def _run(self) -> None:
        while True:
            time.sleep(timing.HEARTBEAT)
            try:
                self.stats.heartbeat(self.id, held_tags(), timing.WORKER_TTL)
                if time.monotonic() - self._last_sweep >= timing.SWEEP:
                    self._last_sweep = time.monotonic()
                    if reaped := self.stats.reap(self.abandoned_after, time.time()):
                        log.warning(
                            "pubtasks: counted %d publishes left pending by a dead publisher "
                            "as unconfirmed",
                            reaped,
                        )
                    self.sweep()
                    self.wake_parked()
                if time.monotonic() - self._last_reconcile >= timing.RECONCILE:
                    self._last_reconcile = time.monotonic()
                    self.reconcile()
            except Exception as exc:  # Redis down, say: try again at the next look
                self._problem(f"{type(exc).__name__}: {exc}")
                self._drop_connection()
            else:
                self._last_problem = ""

    def _problem(self, text: str) -> None:
        if text != self._last_problem:  # once per distinct problem, not every second
            log.warning("pubtasks: supervisor: %s; trying again", text)
        self._last_problem = text

    # -- the embedded beat ------------------------------------------------------------------

    def _watch_beat(self) -> None:
        while not self._beat_gone:
            time.sleep(timing.HEARTBEAT)
            self.check_beat()

    def check_beat(self) -> None:
        beat = embedded_beat(self.worker)
        shutting_down = self._stopping.is_set() or worker_stopping()
        if beat is None or self._beat_gone or shutting_down:
            return
        if beat.is_alive():
            self._check_pulse(beat)
            return
        if not self._beat_seen_dead:  # a signal to the whole group may have stopped beat
            self._beat_seen_dead = True  # before this process's handler set should_stop
            return  # (where beat cannot tell who sent SIGTERM): look again a second later
        self._beat_gone = True
        code = getattr(beat, "exitcode", None)
        how = (
            f"killed by signal {-code}"
            if isinstance(code, int) and code < 0
            else f"exit status {code}"
        )
        log.critical(
            "pubtasks: the embedded beat (pid %s) died (%s): no tick is fired; stopping this "
            "worker with exit status %d so that its supervisor starts it again",
            getattr(beat, "pid", "-"),
            how,
            EXIT_BEAT_DIED,
        )
        stop_worker(EXIT_BEAT_DIED)

    def _check_pulse(self, beat: Any) -> None:
        """Kill a beat that is alive but silent (``pulse``), and stop as for a death."""
        silence = self.pulse.silence()
        if not pulse.hung(silence):
            return
        self._beat_gone = True
        pid = getattr(beat, "pid", None)
        log.critical(
            "pubtasks: the embedded beat (pid %s) is hung: no heartbeat for %.1f s (more "
            "than %g s); killed it (SIGKILL): no tick is fired; stopping this worker with "
            "exit status %d so that its supervisor starts it again",
            pid or "-",
            silence,
            timing.HUNG_AFTER,
            EXIT_BEAT_DIED,
        )
        if isinstance(pid, int) and pid != os.getpid():  # not the threaded beat (no process)
            try:
                os.kill(pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
                beat.join(5)  # reaped, so that Celery's stop of beat signals no other pid
            except (OSError, AssertionError):
                log.debug("pubtasks: killing the hung beat", exc_info=True)
        stop_worker(EXIT_BEAT_DIED)

    # -- orphaned deliveries ------------------------------------------------------------------

    def sweep(self) -> None:
        """Give back the deliveries in Redis's ``unacked`` that no live worker holds."""
        channel = self._channel()
        if channel is None:
            return
        unacked = unacked_tags(channel)
        if not unacked:
            self.orphans.update(set(), set(), time.monotonic())
            return
        held = self.stats.held_by_live_workers() | held_tags()
        due = self.orphans.update(unacked, held, time.monotonic())
        for tag in due:
            give_back(channel, tag)
        if due:
            log.warning(
                "pubtasks: gave back %d reserved task(s) whose worker is gone: %s",
                len(due),
                " ".join(due),
            )

    # -- parked ticks whose lane's holder is gone ------------------------------------------

    def wake_parked(self) -> None:
        """Send again the oldest parked tick of each lane that nobody holds (parked again
        if Celery's transport does not take it)."""
        for entry in sorted(self.lanes.entries()):
            for woken in self.lanes.wake_orphan(entry):
                options = options_of(self.app.conf.beat_schedule, entry)
                try:
                    self.app.send_task(defaults.TASK_NAME, kwargs=woken.kwargs, **options)
                except Exception:
                    self.lanes.park_again(entry, [woken])
                    raise
                log.warning(
                    "pubtasks: woke tick %s, parked while nobody held %s's lane (its holder "
                    "is gone)",
                    woken.tick_id,
                    entry,
                )

    # -- ticks lost in Redis ------------------------------------------------------------------

    def reconcile(self) -> None:
        """Send again each tick beat sent that is, ``timing.RESEND_AFTER`` seconds later, neither
        done nor in Celery's queue nor reserved: its task message was lost in Redis."""
        now = time.time()
        cutoff = now - timing.RESEND_AFTER
        overdue = self.stats.ledger.overdue(cutoff)
        if not overdue:
            return
        channel = self._channel()
        if channel is None:
            return
        conf = self.app.conf
        present = queued_ticks(channel, tick_queues(conf.task_default_queue, conf.beat_schedule))
        present |= self.lanes.parked_ids()
        for tick in overdue:
            if tick.tick_id not in present and self.stats.ledger.claim(tick, cutoff, now):
                self._resend(tick)

    def _entry(self, name: str) -> Any:
        """Entry ``name`` of beat_schedule, or the run-time entry of that name (its recipe
        now: an edit since the tick was sent applies); None if neither has it."""
        entry = (self.app.conf.beat_schedule or {}).get(name)
        if entry is not None:
            return entry
        stored = Catalog(self.stats).get(name)
        if stored is None:
            return None
        try:
            return entry_of(name, stored.spec, self.app.timezone)
        except ConfigError:
            return None

    def _resend(self, tick: SentTick) -> None:
        entry = self._entry(tick.entry)
        if entry is None:
            log.warning(
                "pubtasks: tick %s was lost in Redis, and %s is no longer in beat_schedule "
                "nor a run-time entry: not sent again",
                tick.tick_id,
                tick.entry,
            )
            self.stats.ledger.forget(tick)
            return
        kwargs = tick_kwargs(
            entry.get("kwargs"),
            tick.entry,
            tick.scheduled_at,
            tick.number,
            tick.batch,
            manual=tick.manual,
        )
        self.app.send_task(defaults.TASK_NAME, kwargs=kwargs, **task_options(entry.get("options")))
        log.warning(
            "pubtasks: sent tick %s (number %d) again: %.0f s after beat sent it, it was "
            "neither done, queued nor reserved (its task message was lost in Redis)",
            tick.tick_id,
            tick.number,
            timing.RESEND_AFTER,
        )

    def _channel(self) -> Any:
        """A channel of Celery's transport, when that is Redis (None otherwise)."""
        if self._transport is None:
            self._transport = self.app.connection_for_write()
        if self._transport.transport.driver_type != "redis":
            return None
        return self._transport.default_channel

    def _drop_connection(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception:
                log.debug("pubtasks: closing the supervisor's connection", exc_info=True)
            self._transport = None


class Supervision(bootsteps.StartStopStep):  # type: ignore[misc]
    """The worker step that runs the ``Supervisor``, started after the pool and beat
    (their processes are forked without its thread). Stopping it only tells the thread
    that beat is now being stopped on purpose."""

    label = "pubtasks supervision"
    requires = ("celery.worker.components:Pool", "celery.worker.components:Beat")

    def create(self, w: Any) -> Supervisor:
        return Supervisor(w)
