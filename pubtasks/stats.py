"""Confirm statistics in Redis: every key, every counter update, in one place.

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

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from pubtasks import defaults
from pubtasks.confirms import Delivery, Outcome, Settled
from pubtasks.errors import NotReplicated, StatsUnavailable
from pubtasks.message import message_id, scheduled_at_of
from pubtasks.schedule import REASONS, Run
from pubtasks.sentinel import master_client
from pubtasks.settings import Settings, is_sentinel, mask_url

log = logging.getLogger(__name__)

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
FAILED_TTL = 24 * 3600
#: Seconds a tick's done marks are kept. A tick is redelivered within seconds of its
#: worker's death (``supervision``), or at worst after Celery's visibility_timeout
#: (3600 s, set in ``pubtasks.celery``): the marks outlive both.
DONE_TTL = 2 * 3600

# A pending publish is the member "<message_id>#<publisher>.<n>" of the pending zset;
# message ids are "<entry>@<ms>[.<i>]", so the entry is everything before the last "@",
# and the tick is "<entry>@<ms>", message i of it (0 without a batch).
_ENTRY_OF = """
local function entry_of(key) return string.match(key, '^(.*)@') or '?' end
local marked = {}
local function mark_done(prefix, message_id)
  local tick, i = string.match(message_id, '^(.*@[%w%-]+)%.(%d+)$')
  if not tick then tick, i = message_id, 0 end
  redis.call('SETBIT', prefix .. tick, tonumber(i), 1)
  marked[prefix .. tick] = true
end
local function expire_marked(ttl)
  for key in pairs(marked) do redis.call('EXPIRE', key, ttl) end
end
"""

# One call counts a whole chunk of publishes (a window's worth), so a batch costs one
# round trip, not one per message.
# KEYS: totals, pending, entries.  ARGV: now, entry key prefix, then one key per publish.
_BEGIN = (
    _ENTRY_OF
    + """
local begun, total = {}, 0
for i = 3, #ARGV do
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[i]) == 1 then
    local entry = entry_of(ARGV[i])
    begun[entry] = (begun[entry] or 0) + 1
    total = total + 1
  end
end
for entry, n in pairs(begun) do
  redis.call('SADD', KEYS[3], entry)
  redis.call('HINCRBY', ARGV[2] .. entry, 'published', n)
end
if total > 0 then redis.call('HINCRBY', KEYS[1], 'published', total) end
return total
"""
)

# KEYS: totals, pending.
# ARGV: now, entry key prefix, the highest acked (not returned) message number or 0,
#       done key prefix, done ttl, latency key prefix, then (key, outcome) per publish;
#       outcome is acked, returned (acked and returned), bounced (acked and returned,
#       and to be published again: not done), nacked or unconfirmed.
# Only the caller whose ZREM removes a publish counts it: settling twice counts once.
# A message counted acked or returned is marked done, in the same call. Every acked one
# (returned included) adds its latency, from its tick's time (the ms of its message id,
# the request's for a tick fired by hand) to now, to its entry's histogram.
_SETTLE = (
    _ENTRY_OF
    + f"local BUCKETS = {{{', '.join(map(repr, LATENCY_BUCKETS))}}}\n"
    + """
local counts, counted, latencies = {}, 0, {}
local function bump(hash, field)
  counts[hash] = counts[hash] or {}
  counts[hash][field] = (counts[hash][field] or 0) + 1
end
local function observe(key)
  local ms = string.match(key, '@[%a%-]*(%d+)[^@]*#')
  if not ms then return end
  local seconds = math.max(tonumber(ARGV[1]) - tonumber(ms) / 1000, 0)
  local bucket = '+Inf'
  for _, le in ipairs(BUCKETS) do
    if seconds <= le then bucket = le; break end
  end
  local h = ARGV[6] .. entry_of(key)
  latencies[h] = latencies[h] or {n = 0, sum = 0, buckets = {}}
  local l = latencies[h]
  l.n, l.sum = l.n + 1, l.sum + seconds
  l.buckets[bucket] = (l.buckets[bucket] or 0) + 1
end
for i = 7, #ARGV, 2 do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    counted = counted + 1
    local outcome = ARGV[i + 1]
    if outcome == 'acked' or outcome == 'returned' then
      mark_done(ARGV[4], string.match(ARGV[i], '^(.*)#'))
    end
    if outcome ~= 'nacked' and outcome ~= 'unconfirmed' then observe(ARGV[i]) end
    for _, hash in ipairs({KEYS[1], ARGV[2] .. entry_of(ARGV[i])}) do
      if outcome == 'returned' or outcome == 'bounced' then
        bump(hash, 'acked')
        bump(hash, 'returned')
      else
        bump(hash, outcome)
      end
    end
  end
end
local number = tonumber(ARGV[3])
for hash, fields in pairs(counts) do
  for field, n in pairs(fields) do redis.call('HINCRBY', hash, field, n) end
  local current = tonumber(redis.call('HGET', hash, 'last_confirmed_number') or '0')
  if fields['acked'] and number > 0 and number >= current then
    redis.call('HSET', hash, 'last_confirmed_number', number, 'last_confirmed_at', ARGV[1])
  end
end
for h, l in pairs(latencies) do
  for bucket, n in pairs(l.buckets) do redis.call('HINCRBY', h, tostring(bucket), n) end
  redis.call('HINCRBY', h, 'count', l.n)
  redis.call('HINCRBYFLOAT', h, 'sum', string.format('%.6f', l.sum))
end
expire_marked(ARGV[5])
return counted
"""
)

# KEYS: failed marker of each message, then totals, last_error, entries.
# ARGV: ttl, now, entry, entry key prefix, reason, done key prefix, done ttl, then
#       (message id, message number) per message.
_FAIL = (
    _ENTRY_OF
    + """
local n = (#ARGV - 7) / 2
local totals, last_error, entries = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local failed = 0
for i = 1, n do
  if redis.call('SET', KEYS[i], ARGV[7 + 2 * i] .. ' ' .. ARGV[5], 'NX', 'EX', ARGV[1]) then
    failed = failed + 1
    mark_done(ARGV[6], ARGV[6 + 2 * i])
  end
end
if failed == 0 then return 0 end
redis.call('SADD', entries, ARGV[3])
redis.call('HINCRBY', totals, 'failed', failed)
redis.call('HINCRBY', ARGV[4] .. ARGV[3], 'failed', failed)
redis.call('HSET', last_error, 'at', ARGV[2], 'entry', ARGV[3], 'message_id', ARGV[8],
           'reason', ARGV[5])
expire_marked(ARGV[7])
return failed
"""
)

# Counting ticks skipped: the counters of the totals and of the entry, and the entry's
# record (JSON made by the caller: Lua's cjson writes numbers with 14 digits), kept newest
# first. The caller moves beat:last:<entry> past the run in the same call.
_SKIPPED = """
local function skipped(totals, hash, list, entries, entry, reason, n, record, kept)
  for _, h in ipairs({totals, hash}) do
    redis.call('HINCRBY', h, 'skipped', n)
    redis.call('HINCRBY', h, 'skipped_' .. reason, n)
  end
  redis.call('SADD', entries, entry)
  redis.call('LPUSH', list, record)
  redis.call('LTRIM', list, 0, tonumber(kept) - 1)
end
"""

#: At most how long (s) a tick's numbers are kept for asking again (``beat:numbered``):
#: a beat fires an older tick again only if it took the lock from one an hour stuck.
NUMBERS_KEPT_FOR = 3600.0

# KEYS: totals, beat:number:<entry> (or beat:manual:<entry>), paused, beat:last:<entry>,
#       entry:<entry>, entries, skips:<entry>, beat:numbered:<entry>.
# ARGV: the tick's id, how many numbers, the entry, its scheduled time, 1 to obey a pause
#       (0: a tick fired by hand), 1 if it fires late, records kept, the record of this
#       tick skipped while paused, the floor, how long numbers are kept, then (or
#       nothing) the run of ticks before it skipped for being later than the window:
#       its count, first, last and record.
# Returns {first number (-1: skipped while paused), numbers lifted to the floor}.
# The numbers of the entry's latest tick are kept with its id, and those of its ticks
# of the last ARGV[10] seconds by scheduled time (beat:numbered, the entry's catch-up
# window), so asking again for the same tick (a retried write, a beat that died
# before sending it, or a beat that took the lock from one still sending the ticks it
# had numbered, each next holder firing them again) returns the same numbers: no
# gap, no double allocation, and a tick sent twice is the same message twice.
# The floor is the highest number the caller (beat) was given before: a Sentinel
# failover that lost the master's last writes leaves last_message_number behind the
# numbers already sent, and numbering goes on from the floor instead of giving them
# again (the count lifted is returned, for beat to say so).
# A tick of a paused entry gets no number (-1): it is skipped, and becomes the tick
# the entry's next beat goes on from. A tick numbered is counted fired, once; a tick
# skipped is counted skipped, once: only if it is past beat:last and the latest tick
# numbered (ticks go in order: one at or before either was fired or skipped already).
_NUMBER = (
    _SKIPPED
    + """
local held = redis.call('GET', KEYS[2])
if held then
  local id, first = string.match(held, '^(.*) (%d+)$')
  if id == ARGV[1] then return {tonumber(first), 0} end
end
local at = math.floor(tonumber(ARGV[4]) * 1000 + 0.5)
for _, kept in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], at, at)) do
  local id, first = string.match(kept, '^(.*) (%d+)$')
  if id == ARGV[1] then return {tonumber(first), 0} end
end
local function handled(t)
  local last = tonumber(redis.call('GET', KEYS[4]) or '')
  if last and t <= last then return true end
  local ms = nil
  if held then ms = tonumber(string.match(held, '@(%d+) %d+$')) end
  return ms ~= nil and math.floor(t * 1000 + 0.5) <= ms
end
local function skip(reason, n, first, last, record)
  if handled(tonumber(first)) then return end
  skipped(KEYS[1], KEYS[5], KEYS[7], KEYS[6], ARGV[3], reason, n, record, ARGV[7])
  local current = tonumber(redis.call('GET', KEYS[4]) or '')
  if not current or tonumber(last) > current then redis.call('SET', KEYS[4], last) end
end
if ARGV[5] == '1' and #ARGV >= 14 then
  skip('window', ARGV[11], ARGV[12], ARGV[13], ARGV[14])
end
if ARGV[5] == '1' and redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then
  skip('paused', 1, ARGV[4], ARGV[4], ARGV[8])
  return {-1, 0}
end
local floor = tonumber(ARGV[9])
local stored = tonumber(redis.call('HGET', KEYS[1], 'last_message_number') or '0')
local lifted = 0
if floor > stored then
  lifted = floor - stored
  redis.call('HSET', KEYS[1], 'last_message_number', floor)
end
local first = redis.call('HINCRBY', KEYS[1], 'last_message_number', ARGV[2]) - ARGV[2] + 1
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. first)
redis.call('ZADD', KEYS[8], at, ARGV[1] .. ' ' .. first)
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. (at - tonumber(ARGV[10]) * 1000))
redis.call('SADD', KEYS[6], ARGV[3])
redis.call('HINCRBY', KEYS[5], ARGV[5] == '1' and 'ticks' or 'ticks_manual', 1)
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[5], 'ticks_late', 1) end
return {first, lifted}
"""
)

# KEYS: beat:last:<entry>, beat:number:<entry>, totals, entry:<entry>, entries,
#       skips:<entry>.
# ARGV: the entry, beat:last and beat:number as the caller read them ('' for none),
#       records kept, beat:last to set, then (reason, count, record) per run.
# A beat that takes the beat lock skips the runs it decided from what it read, only if
# that is still so (compare and set): a retried write, or a second beat deciding from
# the same state, finds beat:last moved and counts nothing (0 if it was moved to this
# very value, else -1: read again and decide again).
_SKIP = (
    _SKIPPED
    + """
local last = redis.call('GET', KEYS[1]) or ''
if last ~= ARGV[2] or (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then
  if last == ARGV[5] then return 0 end
  return -1
end
local total = 0
for i = 6, #ARGV, 3 do
  local n = tonumber(ARGV[i + 1])
  skipped(KEYS[3], KEYS[4], KEYS[6], KEYS[5], ARGV[1], ARGV[i], n, ARGV[i + 2], ARGV[4])
  total = total + n
end
redis.call('SET', KEYS[1], ARGV[5])
return total
"""
)

# KEYS: done:<tick>.  ARGV: the tick's batch.  The indexes of its messages done.
_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local done = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  if redis.call('GETBIT', KEYS[1], i) == 1 then done[#done + 1] = i end
end
return done
"""

# KEYS: beat:sent.  ARGV: cutoff, now, member.  Takes a sent tick that is overdue (its
# score at or before the cutoff) for sending again, once: the score moves to now.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# KEYS: pending, totals.  ARGV: cutoff, entry key prefix, limit.
# Publishes left pending by a publisher that died (SIGKILL, lost host) become unconfirmed.
_REAP = (
    _ENTRY_OF
    + """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, key in ipairs(keys) do
  redis.call('ZREM', KEYS[1], key)
  redis.call('HINCRBY', KEYS[2], 'unconfirmed', 1)
  redis.call('HINCRBY', ARGV[2] .. entry_of(key), 'unconfirmed', 1)
end
return #keys
"""
)


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


@dataclass(frozen=True)
class SentTick:
    """A tick beat has sent, as ``beat:sent`` holds it."""

    member: str
    entry: str
    scheduled_at: float
    number: int
    batch: int
    manual: bool = False

    @classmethod
    def parse(cls, member: str) -> SentTick:
        entry, scheduled_at, number, batch, *manual = json.loads(member)
        return cls(member, str(entry), float(scheduled_at), int(number), int(batch), bool(manual))

    @staticmethod
    def member_of(entry: str, scheduled_at: float, number: int, batch: int, manual: bool) -> str:
        return json.dumps([entry, scheduled_at, number, batch, *([True] if manual else [])])

    @property
    def tick_id(self) -> str:
        return message_id(self.entry, self.scheduled_at, self.manual)


@dataclass(frozen=True)
class Skip:
    """A run of an entry's ticks skipped, as ``skips:<entry>`` holds it: why
    (``schedule.REASONS``), the scheduled times of its first and last tick (seconds),
    how many ticks of the schedule from ``first`` to ``last``, both included, and when
    it was recorded."""

    reason: str
    first: float
    last: float
    count: int
    at: float

    @classmethod
    def of(cls, run: Run, at: float) -> Skip:
        return cls(run.reason, run.first, run.last, run.count, at)

    @classmethod
    def parse(cls, record: str) -> Skip:
        r = json.loads(record)
        return cls(
            str(r["reason"]), float(r["first"]), float(r["last"]), int(r["count"]), float(r["at"])
        )

    def record(self) -> str:
        return json.dumps(
            {
                "reason": self.reason,
                "first": self.first,
                "last": self.last,
                "count": self.count,
                "at": self.at,
            }
        )


@dataclass(frozen=True)
class ResumePoint:
    """What a beat that takes the beat lock goes on from, for one entry, read at once:
    ``beat:last:<entry>`` and ``beat:number:<entry>`` as stored (the compare of
    ``Stats.skip``), whether it is paused, and when it was last resumed."""

    last: str | None = None
    numbered: str | None = None
    paused: bool = False
    resumed_at: float | None = None

    @property
    def last_at(self) -> float | None:
        """The scheduled time of the entry's last tick sent or skipped."""
        return None if self.last is None else float(self.last)

    @property
    def numbered_at(self) -> float | None:
        """The scheduled time of the entry's latest tick numbered (maybe not sent)."""
        if self.numbered is None:
            return None
        return scheduled_at_of(self.numbered.rpartition(" ")[0])


@dataclass(frozen=True)
class Counts:
    """The counters of the totals or of one entry, with ``pending`` measured."""

    published: int = 0
    acked: int = 0
    nacked: int = 0
    returned: int = 0
    unconfirmed: int = 0
    failed: int = 0
    pending: int = 0
    ticks: int = 0
    ticks_late: int = 0
    ticks_manual: int = 0
    skipped: int = 0
    skipped_paused: int = 0
    skipped_catch_up: int = 0
    skipped_window: int = 0
    last_confirmed_number: int | None = None
    last_confirmed_at: float | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str], pending: int) -> Counts:
        """The counters of ``raw``; ``pending`` is counted in the pending set, not derived."""
        counters = {name: int(raw.get(name, 0)) for name in COUNTERS + TICKS + SKIPPED}
        number = raw.get("last_confirmed_number")
        at = raw.get("last_confirmed_at")
        return cls(
            **counters,
            pending=pending,
            last_confirmed_number=int(number) if number else None,
            last_confirmed_at=float(at) if at else None,
        )

    @property
    def invariant_holds(self) -> bool:
        """published == acked + nacked + unconfirmed + pending."""
        return self.published == self.acked + self.nacked + self.unconfirmed + self.pending

    def skipped_by(self) -> dict[str, int]:
        """The ticks skipped, by reason (``schedule.REASONS``)."""
        return {reason: int(getattr(self, f"skipped_{reason}")) for reason in REASONS}


@dataclass(frozen=True)
class Latency:
    """One entry's tick-to-confirm latency histogram, as Prometheus wants it: cumulative
    counts per upper bound (``LATENCY_BUCKETS``, then infinity), their count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Latency:
        """From the ``latency:<entry>`` hash: a count per bucket, each field an upper bound."""
        per = Counter({float(k): int(v) for k, v in raw.items() if k not in ("count", "sum")})
        running, cumulative = 0, []
        for le in (*LATENCY_BUCKETS, math.inf):
            running += per[le]
            cumulative.append((le, running))
        return cls(tuple(cumulative), int(raw.get("count", 0)), float(raw.get("sum", 0.0)))


@dataclass(frozen=True)
class Snapshot:
    """Everything ``pubtasks stats`` shows, read in one round trip."""

    totals: Counts
    last_message_number: int
    oldest_pending_at: float | None
    last_error: dict[str, str]
    entries: dict[str, Counts] = field(default_factory=dict)

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        t = self.totals
        return {
            "published": t.published,
            "acked": t.acked,
            "nacked": t.nacked,
            "returned": t.returned,
            "unconfirmed": t.unconfirmed,
            "pending": t.pending,
            "failed": t.failed,
            **{name: getattr(t, name) for name in SKIPPED},
            "invariant_holds": t.invariant_holds,
            "last_message_number": self.last_message_number,
            "last_confirmed_number": t.last_confirmed_number,
            "last_confirmed_at": t.last_confirmed_at,
            "oldest_pending_age": (
                None if self.oldest_pending_at is None else round(now - self.oldest_pending_at, 3)
            ),
            "last_error": self.last_error or None,
            "entries": {
                name: {
                    "published": c.published,
                    "acked": c.acked,
                    "nacked": c.nacked,
                    "returned": c.returned,
                    "unconfirmed": c.unconfirmed,
                    "pending": c.pending,
                    "failed": c.failed,
                    **{name: getattr(c, name) for name in SKIPPED},
                    "last_confirmed_number": c.last_confirmed_number,
                    "last_confirmed_at": c.last_confirmed_at,
                }
                for name, c in sorted(self.entries.items())
            },
        }


def entry_of(pending_key: str) -> str:
    """The entry of a pending publish ``<entry>@<ms>[.<i>]#<publisher>.<n>``."""
    return pending_key.rpartition("#")[0].rpartition("@")[0] or "?"


def connect(
    url: str, retries: int = 10, master_name: str = defaults.REDIS_MASTER_NAME
) -> redis.Redis:
    """A Redis client that retries connection errors with a bounded backoff (at most 1 s apart).

    With a ``sentinel://`` URL (several separated by ``;``), the client is redis-py's
    ``Sentinel(...).master_for(master_name)``: each new connection asks the Sentinels
    where the master is, so a retry after a failover reaches the new master.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 15,
    }
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    return master_client(url, master_name, options)


@contextmanager
def _converted(url: str) -> Iterator[None]:
    try:
        yield
    except MasterNotFoundError as exc:
        raise StatsUnavailable(
            f"Redis at {mask_url(url)} failed: {type(exc).__name__}: {exc} (during a "
            "failover this passes; otherwise check REDIS_MASTER_NAME against the Sentinels' "
            "'sentinel monitor' name)"
        ) from exc
    except redis.RedisError as exc:
        raise StatsUnavailable(
            f"Redis at {mask_url(url)} failed: {type(exc).__name__}: {exc}"
        ) from exc


class Replication:
    """How many replicas each counter write waits for (Redis ``WAIT``), and whether they
    answer.

    Redis replicates asynchronously: a master that dies can take its last writes
    with it, and Sentinel then promotes a replica that never saw them. A write that
    waited for a replica's acknowledgement survives that. When fewer replicas
    acknowledge within ``REDIS_WAIT_TIMEOUT`` (none is connected, say), that is
    logged once, and writes stop waiting for ``RECHECK`` seconds before they try
    again, so a lost replica costs one timeout now and then, not one per write.

    A write that must not be lost (beat numbering a tick it is about to send) always
    waits, and is refused (``holding``) while replicas have been short for less than
    ``grace`` (``REPLICA_GRACE``): a failover leaves the new master without a replica
    until the old one is back, and a master that then loses that role takes those
    writes with it. Past the grace, a replica gone for good, it goes on as the others.
    """

    RECHECK = 5.0

    def __init__(
        self,
        wanted: int,
        clock: Callable[[], float] = time.monotonic,
        grace: float = defaults.REPLICA_GRACE,
    ) -> None:
        self.wanted = wanted
        self.clock = clock
        self.grace = grace
        self.short_until = 0.0
        self.short = False
        self.short_since: float | None = None

    def replicas(self, durable: bool = False) -> int:
        """Replicas to wait for on the next write (0: do not wait now); a ``durable``
        write waits while ``holding``."""
        if not self.wanted:
            return 0
        if self.clock() < self.short_until and not (durable and self.holding()):
            return 0
        return self.wanted

    def holding(self) -> bool:
        """Whether a durable write that replicas did not acknowledge is refused now."""
        return self.short_since is None or self.clock() - self.short_since < self.grace

    def acknowledged(self, count: int) -> None:
        if count >= self.wanted:
            if self.short:
                log.warning("Redis replication is back: %d replica(s) acknowledge writes", count)
            self.short = False
            self.short_since = None
            return
        self.short_until = self.clock() + self.RECHECK
        if self.short_since is None:
            self.short_since = self.clock()
        if not self.short:
            log.warning(
                "Redis: %d of %d replica(s) acknowledged a counter write within %g s; "
                "counting goes on, but a failover now could lose the latest counts",
                count,
                self.wanted,
                defaults.REDIS_WAIT_TIMEOUT,
            )
        self.short = True


class Stats:
    """The statistics of one prefix in one Redis database."""

    def __init__(
        self, client: redis.Redis, prefix: str, url: str = "", wait_replicas: int = 0
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self._url = url
        self.replication = Replication(wait_replicas)
        self._begin = client.register_script(_BEGIN)
        self._settle = client.register_script(_SETTLE)
        self._fail = client.register_script(_FAIL)
        self._reap = client.register_script(_REAP)
        self._number = client.register_script(_NUMBER)
        self._done = client.register_script(_DONE)
        self._claim = client.register_script(_CLAIM)
        self._skip = client.register_script(_SKIP)

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

    def close(self) -> None:
        """Close the connections: to Redis, and to the Sentinels that named the master."""
        self.client.close()
        manager = getattr(self.client.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()

    def _write(self, script: Any, keys: list[Any], args: list[Any], durable: bool = False) -> Any:
        """Run a counting script; with replicas to wait for, WAIT in the same round trip.
        A ``durable`` write that the replicas did not acknowledge raises ``NotReplicated``
        while the replication holds it (the script ran: it must be idempotent)."""
        if not self.replication.replicas(durable):
            return script(keys=keys, args=args)  # redis-py reloads a script Redis lacks
        queue = lambda pipe: script(keys=keys, args=args, client=pipe)  # noqa: E731
        replies, acked = self._replicated(queue, durable)
        if durable and not acked and self.replication.holding():
            raise NotReplicated(
                f"Redis at {mask_url(self._url)}: no replica acknowledged the write within "
                f"{defaults.REDIS_WAIT_TIMEOUT:g} s (a failover underway?); held until one "
                f"does, for up to REPLICA_GRACE={self.replication.grace:g} s"
            )
        return replies[0]

    def _replicated(
        self, queue: Callable[[Any], object], durable: bool = False
    ) -> tuple[list[Any], bool]:
        """Run the commands ``queue`` puts in a pipeline, then WAIT for the replicas (if
        any are wanted now), in one round trip: their replies, without WAIT's, and
        whether the replicas acknowledged them (True when none is wanted)."""
        wait = self.replication.replicas(durable)
        replies = self._pipelined(queue, wait)
        if not wait:  # acknowledged only if no replica is wanted at all
            return replies, not self.replication.wanted
        count = int(replies.pop())
        self.replication.acknowledged(count)
        return replies, count >= wait

    def _pipelined(self, queue: Callable[[Any], object], wait: int) -> list[Any]:
        for attempt in (1, 2):
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    queue(pipe)
                    if wait:
                        pipe.wait(wait, int(defaults.REDIS_WAIT_TIMEOUT * 1000))
                    replies = list(pipe.execute())
                break
            except NoScriptError:
                # redis-py loads a pipeline's scripts before it runs, not again when it
                # retries a lost connection: a retry that lands on a new master (a
                # failover; replicas do not share the script cache) finds none there.
                # Once more loads them on it; the scripts are idempotent.
                if attempt == 2:
                    raise
        return replies

    def run(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """Run another module's write script (``lanes``) as the counting ones run: with
        the replica wait, and Redis errors as ``StatsUnavailable``."""
        with _converted(self._url):
            return self._write(script, keys, args)

    def converted(self) -> AbstractContextManager[None]:
        """Redis errors inside become ``StatsUnavailable``, the URL masked (``control``)."""
        return _converted(self._url)

    def ping(self) -> None:
        with _converted(self._url):
            self.client.ping()

    def next_number(self, count: int = 1) -> int:
        """Allocate ``count`` message numbers; return the first (a task called by hand)."""
        with _converted(self._url):
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
    ) -> int | None:
        """The first of the ``count`` numbers of a tick: allocated once (beat), when the
        tick is counted fired (and ``late``). None when the entry is paused: the tick is
        skipped, counted ``paused`` (a tick fired by hand is not skipped).

        ``window`` is the run of ticks just before this one that beat skipped for being
        later than the window (``plan_ticks``), counted in the same call. ``floor`` is
        the highest number the caller was given before: numbers go on above it even if
        Redis lost the writes that gave it (a failover; logged when it happens).
        ``keep``: how long (s, by scheduled time) a tick's numbers are kept for asking
        again, the entry's catch-up window.

        The numbers must survive a failover before the tick is sent: ``NotReplicated``
        while no replica acknowledges them (``Replication``); asked again, the tick
        gets the same numbers."""
        k = self.keys
        now = time.time() if now is None else now
        tick_id = message_id(entry, scheduled_at, manual)
        keys = [k.totals, k.beat_number(entry, manual), k.paused, k.beat_last(entry)]
        keys += [k.entry(entry), k.entries, k.skips(entry), k.beat_numbered(entry)]
        paused = Skip("paused", scheduled_at, scheduled_at, 1, now)
        args: list[Any] = [tick_id, count, entry, scheduled_at, 0 if manual else 1, int(late)]
        args += [SKIPS_KEPT, paused.record(), floor, min(keep, NUMBERS_KEPT_FOR)]
        if window is not None and window.count > 0 and not manual:
            args += [window.count, window.first, window.last, Skip.of(window, now).record()]
        with _converted(self._url):
            first, lifted = (int(x) for x in self._write(self._number, keys, args, True))
        if lifted:
            log.warning(
                "Redis had lost the last %d message number(s) given (a failover lost the "
                "master's latest writes); numbering goes on after %d, the highest given",
                lifted,
                floor,
            )
        return None if first < 0 else first

    # -- ticks skipped (``beat``) -------------------------------------------------------

    def resume_points(self, entries: Iterable[str]) -> dict[str, ResumePoint]:
        """Where each of ``entries`` goes on from, read in one transaction."""
        k = self.keys
        names = list(entries)
        with _converted(self._url), self.client.pipeline(transaction=True) as pipe:
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
        with _converted(self._url):
            counted = int(self._write(self._skip, keys, args))
        return None if counted < 0 else counted

    def skips(self, entry: str) -> list[Skip]:
        """The records of the entry's ticks skipped, newest first (``SKIPS_KEPT`` at most)."""
        with _converted(self._url):
            records = self.client.lrange(self.keys.skips(entry), 0, -1)
        return [Skip.parse(str(r)) for r in records]

    def begin(self, deliveries: Iterable[Delivery], now: float) -> int:
        """Count basic.publishes as published and pending, before they are sent."""
        k = self.keys
        args: list[Any] = [now, k.entry("")]
        args += (d.key for d in deliveries)
        with _converted(self._url):
            return int(self._write(self._begin, [k.totals, k.pending, k.entries], args))

    def settle(self, settled: Iterable[Settled], now: float) -> int:
        """Count each outcome once; return how many were counted (not already settled)."""
        k = self.keys
        pairs: list[Any] = []
        number = 0
        for x in settled:
            outcome = x.outcome.value
            if x.returned:
                outcome = "bounced" if x.delivery.retry_return else "returned"
            elif x.outcome is Outcome.ACKED:
                number = max(number, x.delivery.number)
            pairs += (x.delivery.key, outcome)
        if not pairs:
            return 0
        args = [now, k.entry(""), number, k.done(""), DONE_TTL, k.latency(""), *pairs]
        with _converted(self._url):
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
        args: list[Any] = [FAILED_TTL, now, entry, k.entry(""), reason, k.done(""), DONE_TTL]
        for failed_id, number in messages:
            args += (failed_id, number)
        with _converted(self._url):
            return int(self._write(self._fail, keys, args))

    def done(self, tick_id: str, batch: int) -> set[int]:
        """Which messages of tick ``tick_id`` are done: counted acked, returned or failed."""
        with _converted(self._url):
            return {int(i) for i in self._done(keys=[self.keys.done(tick_id)], args=[batch])}

    # -- ticks beat has sent, until they are done (``beat``, ``supervision``) -------------

    def sent(
        self,
        entry: str,
        scheduled_at: float,
        number: int,
        batch: int,
        now: float,
        *,
        trigger: str | None = None,
    ) -> bool:
        """Beat sent this tick: where the next beat goes on from, and one to see done.
        ``trigger`` is the request (``beat:triggers``) of a tick fired by hand, now done.
        Whether the replicas acknowledged the record (else ``keep_sent`` it later: a
        failover could lose it, and the tick's task message with it)."""
        k = self.keys
        manual = trigger is not None
        member = SentTick.member_of(entry, scheduled_at, number, batch, manual)

        def queue(pipe: Any) -> None:
            if trigger is None:
                pipe.set(k.beat_last(entry), scheduled_at)
            else:
                pipe.lrem(k.beat_triggers, 0, trigger)
            pipe.zadd(k.beat_sent, {member: now})

        with _converted(self._url):
            return self._replicated(queue)[1]

    def keep_sent(self, records: Mapping[str, float]) -> bool:
        """Record again sent ticks (members, with the time each was sent) that may have
        been lost in a failover, where they are not; True once the replicas acknowledge
        them, or once the replication no longer holds writes (a replica gone for good).
        A tick whose record was lost is then seen by ``overdue`` and, if its task message
        was lost too, sent again by a worker's supervisor."""
        with _converted(self._url):
            acked = self._replicated(
                lambda pipe: pipe.zadd(self.keys.beat_sent, dict(records), nx=True), True
            )[1]
        return acked or not self.replication.holding()

    def overdue(self, cutoff: float, limit: int = 2000) -> list[SentTick]:
        """Sent ticks not yet seen done, sent (or sent again) at or before ``cutoff``;
        those done meanwhile are forgotten here."""
        k = self.keys
        with _converted(self._url):
            members = self.client.zrangebyscore(k.beat_sent, "-inf", cutoff, 0, limit)
            ticks = [SentTick.parse(str(m)) for m in members]
            with self.client.pipeline(transaction=False) as pipe:
                for t in ticks:
                    pipe.bitcount(k.done(t.tick_id))
                counts = pipe.execute()
            finished = [t.member for t, n in zip(ticks, counts, strict=True) if n >= t.batch]
            if finished:
                self.client.zrem(k.beat_sent, *finished)
        return [t for t, n in zip(ticks, counts, strict=True) if n < t.batch]

    def forget_sent(self, tick: SentTick) -> None:
        with _converted(self._url):
            self.client.zrem(self.keys.beat_sent, tick.member)

    def claim(self, tick: SentTick, cutoff: float, now: float) -> bool:
        """Take an overdue tick for sending again; False if another worker just did."""
        with _converted(self._url):
            args: list[Any] = [cutoff, now, tick.member]
            return bool(self._write(self._claim, [self.keys.beat_sent], args))

    # -- workers' heartbeats (``supervision``) ---------------------------------------------

    def heartbeat(self, worker_id: str, held: Iterable[str], ttl: float) -> None:
        """Say that worker ``worker_id`` lives, holding these deliveries, for ``ttl`` s."""
        k = self.keys
        with _converted(self._url), self.client.pipeline(transaction=False) as pipe:
            pipe.set(k.worker(worker_id), " ".join(sorted(held)), px=int(ttl * 1000))
            pipe.sadd(k.workers, worker_id)
            pipe.execute()

    def held_by_live_workers(self) -> set[str]:
        """The deliveries every live worker says it holds; forgets the workers gone."""
        k = self.keys
        with _converted(self._url):
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
        with _converted(self._url):
            self.client.hset(
                self.keys.last_error,
                mapping={"at": now, "entry": entry, "message_id": message_id, "reason": reason},
            )

    def reap(self, older_than: float, now: float, limit: int = 1000) -> int:
        """Count publishes pending for more than ``older_than`` seconds as unconfirmed."""
        k = self.keys
        with _converted(self._url):
            args = [now - older_than, k.entry(""), limit]
            return int(self._write(self._reap, [k.pending, k.totals], args))

    def latencies(self, entries: Iterable[str]) -> dict[str, Latency]:
        """The tick-to-confirm latency histogram of each of ``entries`` that has one."""
        names = sorted(entries)
        with _converted(self._url), self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.latency(name))
            raws = pipe.execute()
        return {name: Latency.from_hash(raw) for name, raw in zip(names, raws, strict=True) if raw}

    def snapshot(self) -> Snapshot:
        """Read every counter in one pipelined round trip (plus one per entry)."""
        k = self.keys
        with _converted(self._url):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.totals)
                pipe.zrange(k.pending, 0, -1)
                pipe.zrange(k.pending, 0, 0, withscores=True)
                pipe.hgetall(k.last_error)
                pipe.smembers(k.entries)
                totals, pending, oldest, last_error, names = pipe.execute()
            with self.client.pipeline(transaction=False) as pipe:
                for name in sorted(names):
                    pipe.hgetall(k.entry(name))
                entries = dict(zip(sorted(names), pipe.execute(), strict=True))
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

    def clear(self) -> int:
        """Delete every key under the prefix (the tests and the bench clear their own)."""
        with _converted(self._url):
            keys = list(self.client.scan_iter(match=f"{self.keys.prefix}*", count=1000))
            return int(self.client.delete(*keys)) if keys else 0
