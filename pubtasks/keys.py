"""Every Redis key pubtasks uses, what it holds, and how long it is kept.

Keys, all under one prefix (``STATS_PREFIX``, default ``pubtasks:``):

========================  ======  ==================================================
key                       type    holds
========================  ======  ==================================================
``totals``                hash    published, acked, nacked, returned, unconfirmed,
                                  failed, last_message_number,
                                  last_confirmed_number, last_confirmed_at, and the
                                  ticks skipped: skipped, skipped_<reason> (paused,
                                  catch_up, window)
``entry:<name>``          hash    the same counters for one schedule entry, and the
                                  ticks beat fired: ticks, ticks_late, ticks_manual
``skips:<entry>``         list    one JSON record per run of the entry's ticks skipped
                                  ({"reason", "first", "last", "count", "at"}), newest
                                  first, the newest ``SKIPS_KEPT`` kept
``entries``               set     the schedule entries seen so far
``latency:<entry>``       hash    tick-to-confirm latency histogram of the entry's acked
                                  publishes: a count per bucket (``LATENCY_BUCKETS``,
                                  upper bounds, and ``+Inf``), ``count`` and ``sum``
``pending``               zset    publishes awaiting a confirm -> publish time
``last_error``            hash    at, entry, message_id, reason
``failed:<message_id>``   string  "<number> <reason>" of a message counted as failed
                                  (marks it counted; kept 1 day)
``done:<tick>``           bitmap  bit i set: message i of the tick was counted acked,
                                  returned (on_return="count") or failed (kept 2 h:
                                  a redelivered tick publishes only what is not done)
``workers``               set     the ids of running workers (host.pid.id)
``worker:<id>``           string  a running worker's reserved deliveries, expires 10 s
                                  after its last heartbeat
``beat:lock``             string  the beat firing ticks (host.pid.id), expires in 10 s
``beat:since``            string  when the beat lock was last taken (where ``health``
                                  starts asking for ticks)
``beat:last:<entry>``     string  the scheduled time of the entry's last sent tick (or
                                  skipped tick)
``beat:number:<entry>``   string  the entry's latest tick and its first number
``beat:sent``             zset    ticks beat has sent and nobody has seen done yet
                                  ([entry, scheduled_at, number, batch(, manual)]
                                  -> sent at)
``beat:manual:<entry>``   string  the entry's latest tick fired by hand and its number
``beat:numbered:<entry>`` zset    the entry's ticks of its catch-up window and their
                                  first numbers ("<tick id> <number>" -> ms)
``beat:triggers``         list    ticks asked for by hand, for the beat holder to fire
                                  ([entry, ms] of ``schedule trigger``)
``triggered``             hash    entry -> the ms of its latest tick asked for by hand
``paused``                hash    entry -> when it was paused (``schedule pause``)
``resumed``               hash    entry -> when it was last resumed
``lane:<entry>``          string  the one tick of the entry that may retry (or run its
                                  payload) now, its tick id; expires (``lanes``)
``parked:<entry>``        zset    the entry's ticks waiting for its lane ("<tick id>
                                  <task kwargs as JSON>" -> scheduled time)
``lanes``                 set     the entries that have parked ticks
``schedule:entries``      hash    run-time entry -> its recipe and when it was added
                                  and changed (JSON, ``catalog``)
``schedule:revs``         hash    run-time entry -> the version of its last change
``schedule:version``      string  bumped by every change of the run-time entries: the
                                  beat holder reads it every 0.5 s
``schedule:removed``      hash    removed run-time entry -> its last recipe
``schedule:removed_at``   hash    removed run-time entry -> when
``schedule:runs``         hash    entry -> ticks numbered, for ``max_runs`` (a run-time
                                  entry's starts again when it is added)
``history:<entry>``       list    the entry's latest ticks ended ({"message_id",
                                  "outcome", "lateness", "attempts", "at"}), newest
                                  first, ``HISTORY_KEPT`` kept
========================  ======  ==================================================

At any quiet moment ``published == acked + nacked + unconfirmed + pending``,
where ``pending`` is the size of the ``pending`` zset. ``returned`` messages
are also counted in ``acked`` (RabbitMQ acks a message it could not route).
Every tick of an entry's schedule ends delivered, counted failed, or counted
skipped with its reason, in the same Lua call that moves ``beat:last:<entry>``
past it, so a skip is counted once whoever records it and however often.

Every write is idempotent, so redis-py may retry it after a lost reply
without counting twice: a publish enters ``pending`` with ``ZADD NX`` under a
key unique to that basic.publish, and only the caller whose ``ZREM`` removes
it counts its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

from pubtasks.schedule import REASONS

COUNTERS = ("published", "acked", "nacked", "returned", "unconfirmed", "failed")
#: Per entry, counted by beat as it numbers a tick: ticks fired on the schedule, those
#: fired more than one interval after their time on it, and ticks fired by hand.
TICKS = ("ticks", "ticks_late", "ticks_manual")
#: Ticks of the schedule beat skipped, in all and by reason (``schedule.REASONS``).
SKIPPED = ("skipped", *(f"skipped_{reason}" for reason in REASONS))
#: Records kept in each entry's ``skips:<entry>`` list (the newest).
SKIPS_KEPT = 10_000
#: Upper bounds (seconds) of the tick-to-confirm latency histogram's buckets, 1 ms to 60 s.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
#: Records kept in each entry's ``history:<entry>`` list (the newest).
HISTORY_KEPT = 100
#: How long marks and records are kept (``timing``).


@dataclass(frozen=True)
class Keys:
    """Every Redis key pubtasks uses, built from one prefix."""

    prefix: str

    @property
    def totals(self) -> str:
        return f"{self.prefix}totals"

    @property
    def entries(self) -> str:
        return f"{self.prefix}entries"

    @property
    def pending(self) -> str:
        return f"{self.prefix}pending"

    @property
    def last_error(self) -> str:
        return f"{self.prefix}last_error"

    def entry(self, name: str) -> str:
        return f"{self.prefix}entry:{name}"

    def latency(self, name: str) -> str:
        return f"{self.prefix}latency:{name}"

    def failed(self, message_id: str) -> str:
        return f"{self.prefix}failed:{message_id}"

    def done(self, tick_id: str) -> str:
        return f"{self.prefix}done:{tick_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    @property
    def beat_lock(self) -> str:
        return f"{self.prefix}beat:lock"

    @property
    def beat_since(self) -> str:
        return f"{self.prefix}beat:since"

    def beat_last(self, entry: str) -> str:
        return f"{self.prefix}beat:last:{entry}"

    def skips(self, entry: str) -> str:
        return f"{self.prefix}skips:{entry}"

    def beat_number(self, entry: str, manual: bool = False) -> str:
        return f"{self.prefix}beat:{'manual' if manual else 'number'}:{entry}"

    def beat_numbered(self, entry: str) -> str:
        return f"{self.prefix}beat:numbered:{entry}"

    @property
    def beat_triggers(self) -> str:
        return f"{self.prefix}beat:triggers"

    @property
    def triggered(self) -> str:
        return f"{self.prefix}triggered"

    @property
    def paused(self) -> str:
        return f"{self.prefix}paused"

    @property
    def resumed(self) -> str:
        return f"{self.prefix}resumed"

    @property
    def beat_sent(self) -> str:
        return f"{self.prefix}beat:sent"

    def lane(self, entry: str) -> str:
        return f"{self.prefix}lane:{entry}"

    def parked(self, entry: str) -> str:
        return f"{self.prefix}parked:{entry}"

    @property
    def lanes(self) -> str:
        return f"{self.prefix}lanes"

    @property
    def schedule_entries(self) -> str:
        return f"{self.prefix}schedule:entries"

    @property
    def schedule_revs(self) -> str:
        return f"{self.prefix}schedule:revs"

    @property
    def schedule_version(self) -> str:
        return f"{self.prefix}schedule:version"

    @property
    def schedule_removed(self) -> str:
        return f"{self.prefix}schedule:removed"

    @property
    def schedule_removed_at(self) -> str:
        return f"{self.prefix}schedule:removed_at"

    @property
    def schedule_runs(self) -> str:
        return f"{self.prefix}schedule:runs"

    def history(self, entry: str) -> str:
        return f"{self.prefix}history:{entry}"
