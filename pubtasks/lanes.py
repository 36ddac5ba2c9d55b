"""Lanes: one tick of an entry retries at a time; its other ticks wait parked in Redis.

A tick that must wait before its next attempt (``tries.Later``: a nack's or a
return's backoff, RabbitMQ unreachable, a confirm timeout) does not sleep in the
worker process. It takes its entry's **lane** and goes back to Celery with a
countdown (a retry, with the same number and ``message_id``), or, when another tick
of the entry holds the lane, it is **parked**: its task kwargs go into Redis
(``parked:<entry>``), and its worker process is free at once. A tick that runs an
entry's payload function takes the lane too, so a slow payload holds one worker
process, not all of them.

When the lane's holder ends (confirmed, failed or given up), it releases the lane
and wakes parked ticks, which are sent to Celery again: all of them when it was
confirmed after a retry (the entry is well again), the oldest one otherwise (it
holds the lane next). The lane expires (``timing.LANE_TTL`` after its holder's countdown),
and every worker's supervisor wakes the oldest parked tick of a lane that nobody
holds (``wake_orphans``), so a holder that died does not strand the others. Each
woken tick is checked against its deadline as any other: one that waited past
``TICK_DEADLINE`` fails, with its reason.

So a sick entry sends RabbitMQ one publish per tick that falls due, plus its one
holder's retries (at most one every backoff), and never more: at most one
retrying tick per entry at a time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pubtasks import timing
from pubtasks.stats import Stats

log = logging.getLogger(__name__)


# KEYS: lane, parked, lanes.  ARGV: tick id, ttl ms, member, scheduled time, entry.
# The holder (or a tick that finds the lane free) holds it for ttl; anyone else parks.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[5])
return 0
"""

# KEYS: lane, parked, lanes.  ARGV: tick id, how many to wake (-1: all), ttl ms, entry.
# Only the holder releases; it wakes the oldest parked ticks. Waking one hands the
# lane to it (for ttl), so that it is the next holder; waking all frees the lane.
# A tick id that does not hold the lane ("") wakes one only if nobody holds it.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if holder then return {} end
elseif holder ~= ARGV[1] then
  return {}
end
local n = tonumber(ARGV[2])
local woken = redis.call('ZRANGE', KEYS[2], 0, n < 0 and -1 or n - 1)
if #woken > 0 then redis.call('ZREM', KEYS[2], unpack(woken)) end
if n == 1 and #woken == 1 then
  local next_id = string.match(woken[1], '^(%S+)')
  redis.call('SET', KEYS[1], next_id, 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[4]) end
return woken
"""


@dataclass(frozen=True)
class Parked:
    """A parked tick: its id and the publish task's kwargs that send it again."""

    tick_id: str
    kwargs: dict[str, Any]

    @property
    def member(self) -> str:
        return f"{self.tick_id} {json.dumps(self.kwargs, sort_keys=True)}"

    @classmethod
    def parse(cls, member: str) -> Parked:
        tick_id, _, kwargs = member.partition(" ")
        return cls(tick_id, json.loads(kwargs))


class Lanes:
    """The entries' lanes in Redis (keys ``lane:<entry>``, ``parked:<entry>``, ``lanes``)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._hold = stats.client.register_script(_HOLD)
        self._release = stats.client.register_script(_RELEASE)

    def hold(self, entry: str, tick: Parked, scheduled_at: float, countdown: float) -> bool:
        """Take (or keep) ``entry``'s lane for ``tick`` until its countdown and timing.LANE_TTL
        have passed: True. False: another tick holds it, and ``tick`` is parked."""
        k = self.stats.keys
        ttl = int((countdown + timing.LANE_TTL) * 1000)
        keys = [k.lane(entry), k.parked(entry), k.lanes]
        args: list[Any] = [tick.tick_id, ttl, tick.member, scheduled_at, entry]
        return bool(self.stats.run(self._hold, keys, args))

    def release(self, entry: str, tick_id: str, wake_all: bool) -> list[Parked]:
        """``tick_id`` is done with ``entry``'s lane: the parked ticks it wakes (all, or the
        oldest, which then holds the lane). A tick that does not hold it wakes none."""
        return self._wake(entry, tick_id, -1 if wake_all else 1)

    def wake_orphan(self, entry: str) -> list[Parked]:
        """The oldest parked tick of ``entry`` if nobody holds its lane (its holder died,
        or its lane expired), which then holds it; else none."""
        return self._wake(entry, "", 1)

    def _wake(self, entry: str, tick_id: str, count: int) -> list[Parked]:
        k = self.stats.keys
        keys = [k.lane(entry), k.parked(entry), k.lanes]
        args: list[Any] = [tick_id, count, int(timing.LANE_TTL * 1000), entry]
        woken = self.stats.run(self._release, keys, args)
        return [Parked.parse(str(m)) for m in woken]

    def park_again(self, entry: str, ticks: list[Parked]) -> None:
        """Put woken ticks that could not be sent back among ``entry``'s parked ones."""
        k = self.stats.keys
        with self.stats.converted(), self.stats.client.pipeline(transaction=False) as pipe:
            for tick in ticks:
                pipe.zadd(k.parked(entry), {tick.member: float(tick.kwargs["scheduled_at"])})
            pipe.sadd(k.lanes, entry)
            pipe.execute()

    def entries(self) -> set[str]:
        """The entries that have parked ticks."""
        with self.stats.converted():
            return {str(e) for e in self.stats.client.smembers(self.stats.keys.lanes)}

    def parked_ids(self) -> set[str]:
        """The ids of every parked tick (they are neither queued nor lost)."""
        k = self.stats.keys
        names = sorted(self.entries())
        with self.stats.converted(), self.stats.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrange(k.parked(name), 0, -1)
            found = pipe.execute()
        return {str(m).partition(" ")[0] for members in found for m in members}

    def parked(self, entry: str) -> int:
        """How many ticks of ``entry`` are parked."""
        with self.stats.converted():
            return int(self.stats.client.zcard(self.stats.keys.parked(entry)))
