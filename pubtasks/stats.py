"""Confirm statistics in Redis: every counter update, every tick numbered, skipped or
sent, and every read, through the Lua scripts of ``lua`` on the keys of ``keys``.

At any quiet moment ``published == acked + nacked + unconfirmed + pending``
(``keys`` says where each lives).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from pubtasks import defaults, lua, timing
from pubtasks.confirms import Delivery, Settled
from pubtasks.counters import outcome_of
from pubtasks.ids import entry_of, message_id
from pubtasks.keys import HISTORY_KEPT, SKIPS_KEPT, Keys
from pubtasks.records import Counts, Latency, ResumePoint, Skip, Snapshot
from pubtasks.schedule import Run
from pubtasks.sent import SentLedger
from pubtasks.settings import Settings
from pubtasks.store import Store, connect, redis_errors

log = logging.getLogger(__name__)


class NotFired(StrEnum):
    """Why beat's tick got no number, besides a pause (``Stats.tick_number``)."""

    FINISHED = "finished"  # the entry had its max_runs
    OVERLAP = "overlap"  # skipped: its previous tick is not settled
    STALE = "stale"  # the run-time entry changed or was removed: read it again


NOT_FIRED = {-2: NotFired.FINISHED, -3: NotFired.OVERLAP, -4: NotFired.STALE}


@dataclass(frozen=True)
class Ask:
    """One tick to number (``Stats.tick_numbers``)."""

    entry: str
    scheduled_at: float
    count: int = 1  # its messages (PUBLISH_BATCH)
    manual: bool = False  # fired by hand: never paused, skipped or finished
    late: bool = False  # counted ticks_late
    window: Run | None = None  # the ticks just before it, passed over for being too late
    rev: str = ""  # the run-time entry's version it was fired from ('' for a config entry)
    max_runs: int | None = None
    overlap: bool = False  # skip it while the entry's previous tick is unsettled
    keep: float = defaults.CATCH_UP_WITHIN  # how long its numbers are kept: the catch-up window


class Stats(Store):
    """The statistics of one prefix in one Redis database."""

    def __init__(
        self, client: redis.Redis, prefix: str, url: str = "", wait_replicas: int = 0
    ) -> None:
        super().__init__(client, url, wait_replicas)
        self.keys = Keys(prefix)
        self.ledger = SentLedger(self, self.keys)
        self._begin = client.register_script(lua.BEGIN)
        self._settle = client.register_script(lua.SETTLE)
        self._fail = client.register_script(lua.FAIL)
        self._reap = client.register_script(lua.REAP)
        self._number = client.register_script(lua.NUMBER)
        self._done = client.register_script(lua.DONE)
        self._history = client.register_script(lua.HISTORY)
        self._counters = client.register_script(lua.ENTRY_COUNTERS)
        self._skip = client.register_script(lua.SKIP)
        self._backfill = client.register_script(lua.BACKFILL)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        retries: int = 10,
        master_name: str = defaults.REDIS_MASTER_NAME,
        wait_replicas: int = 0,
    ) -> Stats:
        return cls(connect(url, retries, master_name), prefix, url, wait_replicas)

    @classmethod
    def of(cls, s: Settings, retries: int = 10, prefix: str | None = None) -> Stats:
        """The statistics ``s`` names: its REDIS_URL (or Sentinels) and STATS_PREFIX."""
        return cls.from_url(
            s.redis_url,
            s.stats_prefix if prefix is None else prefix,
            retries,
            s.redis_master_name,
            s.wait_replicas,
        )

    def next_number(self, count: int = 1) -> int:
        """Allocate ``count`` message numbers; return the first (a task called by hand)."""
        with redis_errors(self._url):
            last = int(self.client.hincrby(self.keys.totals, "last_message_number", count))
        return last - count + 1

    def tick_number(
        self,
        entry: str,
        scheduled_at: float,
        count: int = 1,
        manual: bool = False,
        late: bool = False,
        *,
        window: Run | None = None,
        now: float | None = None,
        floor: int = 0,
        keep: float = defaults.CATCH_UP_WITHIN,
        rev: str = "",
        max_runs: int | None = None,
        overlap: bool = False,
        deadline: float = defaults.TICK_DEADLINE,
    ) -> int | NotFired | None:
        """The first of the ``count`` numbers of one tick (``tick_numbers``, for one)."""
        ask = Ask(entry, scheduled_at, count, manual, late, window, rev, max_runs, overlap, keep)
        return self.tick_numbers([ask], now=now, floor=floor, deadline=deadline)[0]

    def tick_numbers(
        self,
        asks: Sequence[Ask],
        *,
        now: float | None = None,
        floor: int = 0,
        deadline: float = defaults.TICK_DEADLINE,
    ) -> list[int | NotFired | None]:
        """The first of each tick's numbers, for ticks due together (a burst), in one Lua
        call and one replica wait. Per tick: allocated once (beat), when the tick is
        counted fired (and ``late``). None when the entry is paused: the tick is skipped,
        counted ``paused`` (a tick fired by hand is not skipped).

        ``window`` is the run of ticks just before this one that beat skipped for being
        later than the window (``plan_ticks``), counted in the same call. ``floor`` is
        the highest number the caller was given before: numbers go on above it even if
        Redis lost the writes that gave it (a failover; logged when it happens).
        ``keep``: how long (s, by scheduled time) a tick's numbers are kept for asking
        again, the entry's catch-up window.

        ``rev``: the version of the run-time entry the tick was fired from (``catalog``);
        ``NotFired.STALE`` if the entry has changed or gone since. ``max_runs``: after
        that many ticks numbered, ``NotFired.FINISHED``. ``overlap``: skip the tick,
        counted ``overlap``, while the entry's previous one is unsettled and younger than
        ``deadline`` (``NotFired.OVERLAP``).

        The numbers must survive a failover before the ticks are sent: ``NotReplicated``
        while no replica acknowledges them (``Replication``); asked again, each tick
        gets the same numbers."""
        if not asks:
            return []
        k = self.keys
        now = time.time() if now is None else now
        keys: list[Any] = [k.totals, k.paused, k.entries, k.schedule_revs, k.schedule_runs]
        ticks: list[list[Any]] = []
        for a in asks:
            entry, manual = a.entry, a.manual
            tick_id = message_id(entry, a.scheduled_at, manual)
            kept = min(a.keep, timing.NUMBERS_KEPT_FOR)
            own: list[Any] = [tick_id, a.count, entry, repr(a.scheduled_at), int(not manual)]
            own += [int(a.late), kept, a.rev, a.max_runs or 0, int(a.overlap)]
            w = a.window
            if w is not None and w.count > 0 and not manual:
                own += [w.count, repr(w.first), repr(w.last), Skip.of(w, now).record()]
            ticks.append(own)
        shared = [floor, SKIPS_KEPT, k.prefix, deadline, repr(now)]
        shared += [k.beat_number(""), k.beat_number("", manual=True), k.beat_last("")]
        shared += [k.entry(""), k.skips(""), k.beat_numbered("")]
        args = [json.dumps(shared), json.dumps(ticks)]
        with redis_errors(self._url):
            reply = self._write(self._number, keys, args, True)
        replies = [int(x) for x in str(reply).split()]
        lifted = sum(replies[1::2])
        if lifted:
            log.warning(
                "Redis had lost the last %d message number(s) given (a failover lost the "
                "master's latest writes); numbering goes on after %d, the highest given",
                lifted,
                floor,
            )
        return [
            None if first == -1 else NOT_FIRED[first] if first < 0 else first
            for first in replies[0::2]
        ]

    # -- ticks skipped (``beat``) -------------------------------------------------------

    def resume_points(self, entries: Iterable[str]) -> dict[str, ResumePoint]:
        """Where each of ``entries`` goes on from, read in one transaction."""
        k = self.keys
        names = list(entries)
        with redis_errors(self._url), self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.paused)
            pipe.hgetall(k.resumed)
            for name in names:
                pipe.get(k.beat_last(name))
                pipe.get(k.beat_number(name))
            paused, resumed, *read = pipe.execute()
        return {
            name: ResumePoint(
                last=read[2 * i],
                numbered=read[2 * i + 1],
                paused=name in paused,
                resumed_at=float(resumed[name]) if name in resumed else None,
            )
            for i, name in enumerate(names)
        }

    def skip(self, entry: str, runs: Sequence[Run], seen: ResumePoint, now: float) -> int | None:
        """Count ``runs`` of the entry's ticks skipped, each with its record, and move
        ``beat:last:<entry>`` to the last of them, if it and ``beat:number:<entry>`` are
        still as ``seen`` (compare and set). The ticks counted (0 when this very skip
        was counted already: a retried write); None when another beat moved them: read
        them again and decide again."""
        runs = [r for r in runs if r.count > 0]
        if not runs:
            return 0
        k = self.keys
        keys = [k.beat_last(entry), k.beat_number(entry), k.totals, k.entry(entry), k.entries]
        keys.append(k.skips(entry))
        last = max(runs, key=lambda r: r.last).last
        args: list[Any] = [entry, seen.last or "", seen.numbered or "", SKIPS_KEPT, repr(last)]
        for r in runs:
            args += (r.reason, r.count, Skip.of(r, now).record())
        with redis_errors(self._url):
            counted = int(self._write(self._skip, keys, args))
        return None if counted < 0 else counted

    def skips(self, entry: str) -> list[Skip]:
        """The records of the entry's ticks skipped, newest first (``SKIPS_KEPT`` at most)."""
        with redis_errors(self._url):
            records = self.client.lrange(self.keys.skips(entry), 0, -1)
        return [Skip.parse(str(r)) for r in records]

    def begin(self, deliveries: Iterable[Delivery], now: float) -> int:
        """Count basic.publishes as published and pending, before they are sent."""
        k = self.keys
        args: list[Any] = [now, k.entry("")]
        args += (d.key for d in deliveries)
        with redis_errors(self._url):
            return int(self._write(self._begin, [k.totals, k.pending, k.entries], args))

    def settle(self, settled: Iterable[Settled], now: float) -> int:
        """Count each outcome once; return how many were counted (not already settled)."""
        k = self.keys
        pairs: list[Any] = []
        number = 0
        for x in settled:
            outcome = outcome_of(x)
            if outcome == "acked":
                number = max(number, x.delivery.number)
            pairs += (x.delivery.key, outcome)
        if not pairs:
            return 0
        args = [now, k.entry(""), number, k.done(""), timing.DONE_TTL, k.latency(""), *pairs]
        with redis_errors(self._url):
            return int(self._write(self._settle, [k.totals, k.pending], args))

    def fail(self, entry: str, messages: Sequence[tuple[str, int]], reason: str, now: float) -> int:
        """Count messages given up as failed, each once, and make ``reason`` the last error.

        ``messages`` are (message_id, message number); each is marked done, and its
        failed marker keeps its number and the reason.
        """
        if not messages:
            return 0
        k = self.keys
        keys = [k.failed(m) for m, _ in messages] + [k.totals, k.last_error, k.entries]
        args: list[Any] = [
            timing.FAILED_TTL,
            now,
            entry,
            k.entry(""),
            reason,
            k.done(""),
            timing.DONE_TTL,
        ]
        for failed_id, number in messages:
            args += (failed_id, number)
        with redis_errors(self._url):
            return int(self._write(self._fail, keys, args))

    def done(self, tick_id: str, batch: int) -> set[int]:
        """Which messages of tick ``tick_id`` are done: counted acked, returned or failed."""
        return self.done_many([(tick_id, batch)])[0]

    def done_many(self, ticks: Sequence[tuple[str, int]]) -> list[set[int]]:
        """``done`` of each (tick id, batch), in one Lua call."""
        keys = [self.keys.done(tick_id) for tick_id, _ in ticks]
        args = [batch for _, batch in ticks]
        with redis_errors(self._url):
            replies = self._done(keys=keys, args=args)
        return [{int(i) for i in reply} for reply in replies]

    # -- workers' heartbeats (``supervision``) ---------------------------------------------

    def heartbeat(self, worker_id: str, held: Iterable[str], ttl: float) -> None:
        """Say that worker ``worker_id`` lives, holding these deliveries, for ``ttl`` s."""
        k = self.keys
        with redis_errors(self._url), self.client.pipeline(transaction=False) as pipe:
            pipe.set(k.worker(worker_id), " ".join(sorted(held)), px=int(ttl * 1000))
            pipe.sadd(k.workers, worker_id)
            pipe.execute()

    def held_by_live_workers(self) -> set[str]:
        """The deliveries every live worker says it holds; forgets the workers gone."""
        k = self.keys
        with redis_errors(self._url):
            ids = sorted(str(i) for i in self.client.smembers(k.workers))
            if not ids:
                return set()
            records = self.client.mget([k.worker(i) for i in ids])
            gone = [i for i, r in zip(ids, records, strict=True) if r is None]
            if gone:
                self.client.srem(k.workers, *gone)
        return {str(tag) for r in records if r for tag in r.split()}

    def error(self, entry: str, message_id: str, reason: str, now: float) -> None:
        """Record ``reason`` as the last error without failing the tick."""
        with redis_errors(self._url):
            self.client.hset(
                self.keys.last_error,
                mapping={"at": now, "entry": entry, "message_id": message_id, "reason": reason},
            )

    def reap(self, older_than: float, now: float, limit: int = 1000) -> int:
        """Count publishes pending for more than ``older_than`` seconds as unconfirmed."""
        k = self.keys
        with redis_errors(self._url):
            args = [now - older_than, k.entry(""), limit]
            return int(self._write(self._reap, [k.pending, k.totals], args))

    def latencies(self, entries: Iterable[str]) -> dict[str, Latency]:
        """The tick-to-confirm latency histogram of each of ``entries`` that has one."""
        names = sorted(entries)
        with redis_errors(self._url), self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.latency(name))
            raws = pipe.execute()
        return {name: Latency.from_hash(raw) for name, raw in zip(names, raws, strict=True) if raw}

    def snapshot(self) -> Snapshot:
        """Read every counter: the totals in one pipelined round trip, every entry's in
        one Lua call (one reply to parse, not one per entry: 10,000 entries)."""
        k = self.keys
        with redis_errors(self._url):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.totals)
                pipe.zrange(k.pending, 0, -1)
                pipe.zrange(k.pending, 0, 0, withscores=True)
                pipe.hgetall(k.last_error)
                totals, pending, oldest, last_error = pipe.execute()
            raw = json.loads(self._counters(keys=[k.entries], args=[k.entry("")]))
            entries = {  # (cjson writes an empty hash as {})
                name: dict(zip(flat[0::2], flat[1::2], strict=True)) if flat else {}
                for name, flat in raw.items()
            }
        by_entry = Counter(entry_of(key) for key in pending)
        return Snapshot(
            totals=Counts.from_hash(totals, pending=len(pending)),
            last_message_number=int(totals.get("last_message_number", 0)),
            oldest_pending_at=float(oldest[0][1]) if oldest else None,
            last_error=last_error,
            entries={
                name: Counts.from_hash(raw, pending=by_entry[name]) for name, raw in entries.items()
            },
        )

    def backfill_number(self, entry: str, scheduled_at: float, count: int = 1) -> int:
        """The first number of a tick fired by ``schedule backfill``: those it had, if it
        was numbered within the entry's catch-up window, else new ones (``lua.BACKFILL``)."""
        k = self.keys
        keys = [k.totals, k.beat_number(entry), k.beat_numbered(entry), k.entry(entry)]
        keys.append(k.entries)
        args = [message_id(entry, scheduled_at), count, scheduled_at, entry]
        with redis_errors(self._url):
            return int(self._write(self._backfill, keys, args, True))

    # -- each entry's latest ticks (``schedule show``) ----------------------------------

    def ran(self, entry: str, record: dict[str, Any]) -> None:
        """Add a tick that ended to the entry's history (the newest ``HISTORY_KEPT``)."""
        self.ran_many([(entry, record)])

    def ran_many(self, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """``ran`` for each (entry, record), in one Lua call."""
        if not records:
            return
        keys = [self.keys.history(entry) for entry, _ in records]
        args: list[Any] = [HISTORY_KEPT]
        args += (json.dumps(record, sort_keys=True) for _, record in records)
        with redis_errors(self._url):
            self._history(keys=keys, args=args)

    def history(self, entry: str, count: int = 10) -> list[dict[str, Any]]:
        """The entry's latest ``count`` ticks that ended, newest first."""
        with redis_errors(self._url):
            raw = self.client.lrange(self.keys.history(entry), 0, count - 1)
        return [json.loads(r) for r in raw]

    def clear(self) -> int:
        """Delete every key under the prefix (the tests and the bench clear their own)."""
        with redis_errors(self._url):
            keys = list(self.client.scan_iter(match=f"{self.keys.prefix}*", count=1000))
            return int(self.client.delete(*keys)) if keys else 0
