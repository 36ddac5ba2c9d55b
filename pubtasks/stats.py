"""Confirm statistics in Redis: every key, every counter update, in one place.

Keys, all under one prefix (``STATS_PREFIX``, default ``pubtasks:``):

========================  ======  ==================================================
key                       type    holds
========================  ======  ==================================================
``totals``                hash    published, acked, nacked, returned, unconfirmed,
                                  failed, last_message_number,
                                  last_confirmed_number, last_confirmed_at
``entry:<name>``          hash    the same counters for one schedule entry
``entries``               set     the schedule entries seen so far
``pending``               zset    publishes awaiting a confirm -> publish time
``pending:entry``         hash    pending publish -> its schedule entry
``last_error``            hash    at, entry, message_id, reason
``failed:<message_id>``   string  marks a tick already counted as failed (kept 1 day)
========================  ======  ==================================================

At any quiet moment ``published == acked + nacked + unconfirmed + pending``,
where ``pending`` is the size of the ``pending`` zset. ``returned`` messages
are also counted in ``acked`` (RabbitMQ acks a message it could not route).

Every write is idempotent, so redis-py may retry it after a lost reply
without counting twice: a publish enters ``pending`` with ``ZADD NX`` under a
key unique to that basic.publish, and only the caller whose ``ZREM`` removes
it counts its outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pubtasks.confirms import Delivery, Settled
from pubtasks.errors import StatsUnavailable
from pubtasks.settings import mask_url

COUNTERS = ("published", "acked", "nacked", "returned", "unconfirmed", "failed")
FAILED_TTL = 24 * 3600

# KEYS: totals, entry:<name>, pending, pending:entry, entries.  ARGV: key, now, entry.
_BEGIN = """
if redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'published', 1)
redis.call('HINCRBY', KEYS[2], 'published', 1)
return 1
"""

# KEYS: totals, entry:<name>, pending, pending:entry.
# ARGV: key, outcome, returned (0/1), message number, now.
_SETTLE = """
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[4], ARGV[1])
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], ARGV[2], 1)
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[i], 'returned', 1)
  elseif ARGV[2] == 'acked' then
    local last = tonumber(redis.call('HGET', KEYS[i], 'last_confirmed_number') or '0')
    if tonumber(ARGV[4]) >= last then
      redis.call('HSET', KEYS[i], 'last_confirmed_number', ARGV[4], 'last_confirmed_at', ARGV[5])
    end
  end
end
return 1
"""

# KEYS: failed:<id>, totals, entry:<name>, last_error, entries.
# ARGV: ttl, now, entry, id, reason.
_FAIL = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('HINCRBY', KEYS[2], 'failed', 1)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
redis.call('HSET', KEYS[4], 'at', ARGV[2], 'entry', ARGV[3], 'message_id', ARGV[4],
           'reason', ARGV[5])
return 1
"""

# KEYS: pending, pending:entry, totals.  ARGV: cutoff, entry key prefix, limit.
# Publishes left pending by a publisher that died (SIGKILL, lost host) become unconfirmed.
_REAP = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, key in ipairs(keys) do
  local entry = redis.call('HGET', KEYS[2], key) or '?'
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  redis.call('HINCRBY', KEYS[3], 'unconfirmed', 1)
  redis.call('HINCRBY', ARGV[2] .. entry, 'unconfirmed', 1)
end
return #keys
"""


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
    def pending_entry(self) -> str:
        return f"{self.prefix}pending:entry"

    @property
    def last_error(self) -> str:
        return f"{self.prefix}last_error"

    def entry(self, name: str) -> str:
        return f"{self.prefix}entry:{name}"

    def failed(self, message_id: str) -> str:
        return f"{self.prefix}failed:{message_id}"


@dataclass(frozen=True)
class Counts:
    """The counters of the totals or of one entry, with ``pending`` derived or measured."""

    published: int = 0
    acked: int = 0
    nacked: int = 0
    returned: int = 0
    unconfirmed: int = 0
    failed: int = 0
    pending: int = 0
    last_confirmed_number: int | None = None
    last_confirmed_at: float | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str], pending: int | None = None) -> Counts:
        counters = {name: int(raw.get(name, 0)) for name in COUNTERS}
        if pending is None:  # one entry: whatever is neither acked, nacked nor unconfirmed
            pending = counters["published"] - (
                counters["acked"] + counters["nacked"] + counters["unconfirmed"]
            )
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
                    "last_confirmed_number": c.last_confirmed_number,
                    "last_confirmed_at": c.last_confirmed_at,
                }
                for name, c in sorted(self.entries.items())
            },
        }


def connect(url: str, retries: int = 10) -> redis.Redis:
    """A Redis client that retries connection errors with a bounded backoff (at most 1 s apart)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=15,
    )


@contextmanager
def _converted(url: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StatsUnavailable(
            f"Redis at {mask_url(url)} failed: {type(exc).__name__}: {exc}"
        ) from exc


class Stats:
    """The statistics of one prefix in one Redis database."""

    def __init__(self, client: redis.Redis, prefix: str, url: str = "") -> None:
        self.client = client
        self.keys = Keys(prefix)
        self._url = url
        self._begin = client.register_script(_BEGIN)
        self._settle = client.register_script(_SETTLE)
        self._fail = client.register_script(_FAIL)
        self._reap = client.register_script(_REAP)

    @classmethod
    def from_url(cls, url: str, prefix: str, retries: int = 10) -> Stats:
        return cls(connect(url, retries), prefix, url)

    def ping(self) -> None:
        with _converted(self._url):
            self.client.ping()

    def next_number(self) -> int:
        """Allocate the next message number (beat does, once per tick)."""
        with _converted(self._url):
            return int(self.client.hincrby(self.keys.totals, "last_message_number", 1))

    def begin(self, deliveries: Iterable[Delivery], now: float) -> None:
        """Count basic.publishes as published and pending, before they are sent."""
        k = self.keys
        with _converted(self._url), self.client.pipeline(transaction=False) as pipe:
            for d in deliveries:
                self._begin(
                    keys=[k.totals, k.entry(d.entry), k.pending, k.pending_entry, k.entries],
                    args=[d.key, now, d.entry],
                    client=pipe,
                )
            pipe.execute()

    def settle(self, settled: Iterable[Settled], now: float) -> int:
        """Count each outcome once; return how many were counted (not already settled)."""
        k = self.keys
        with _converted(self._url), self.client.pipeline(transaction=False) as pipe:
            for s in settled:
                d = s.delivery
                self._settle(
                    keys=[k.totals, k.entry(d.entry), k.pending, k.pending_entry],
                    args=[d.key, s.outcome.value, int(s.returned), d.number, now],
                    client=pipe,
                )
            return sum(int(r) for r in pipe.execute())

    def fail(self, entry: str, message_id: str, reason: str, now: float) -> bool:
        """Count a tick as failed, once, and make ``reason`` the last error."""
        k = self.keys
        with _converted(self._url):
            return bool(
                self._fail(
                    keys=[k.failed(message_id), k.totals, k.entry(entry), k.last_error, k.entries],
                    args=[FAILED_TTL, now, entry, message_id, reason],
                )
            )

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
            return int(
                self._reap(
                    keys=[k.pending, k.pending_entry, k.totals],
                    args=[now - older_than, k.entry(""), limit],
                )
            )

    def snapshot(self) -> Snapshot:
        """Read every counter in one pipelined round trip (plus one per entry)."""
        k = self.keys
        with _converted(self._url):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.totals)
                pipe.zcard(k.pending)
                pipe.zrange(k.pending, 0, 0, withscores=True)
                pipe.hgetall(k.last_error)
                pipe.smembers(k.entries)
                totals, pending, oldest, last_error, names = pipe.execute()
            with self.client.pipeline(transaction=False) as pipe:
                for name in sorted(names):
                    pipe.hgetall(k.entry(name))
                entries = dict(zip(sorted(names), pipe.execute(), strict=True))
        return Snapshot(
            totals=Counts.from_hash(totals, pending=int(pending)),
            last_message_number=int(totals.get("last_message_number", 0)),
            oldest_pending_at=float(oldest[0][1]) if oldest else None,
            last_error=last_error,
            entries={name: Counts.from_hash(raw) for name, raw in entries.items()},
        )

    def clear(self) -> int:
        """Delete every key under the prefix (tests, and ``pubtasks stats --reset``)."""
        with _converted(self._url):
            keys = list(self.client.scan_iter(match=f"{self.keys.prefix}*", count=1000))
            return int(self.client.delete(*keys)) if keys else 0
