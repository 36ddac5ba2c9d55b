"""Control at run time, kept in Redis beside the statistics: pause, resume, trigger.

``pubtasks schedule pause ENTRY`` marks the entry in the ``paused`` hash. The beat
holding the beat lock reads the mark atomically with each tick's number
(``Stats.tick_number``): a tick of a paused entry is not numbered, not sent and
not counted, and the next tick after ``resume`` is the next one on the schedule.
The mark is in Redis, so it outlives restarts and lock takeovers. Each tick
skipped while paused is counted (``skipped_paused``). ``resume`` records when (the
``resumed`` hash): a beat that was down meanwhile and takes the lock later counts
the ticks due until then skipped, ``paused``, and does not catch them up
(``resuming.going_on``).

``pubtasks schedule trigger ENTRY`` appends a request to ``beat:triggers``; the beat
holder reads the list at least every ``POLL`` seconds, fires one extra tick for
each request (``message_id`` ``<entry>@manual-<ms>``, a number of its own), and
removes the request once the tick is sent, in the same round trip that records
it sent. Requests made while no beat holds the lock wait for one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pubtasks.ids import message_id
from pubtasks.stats import Stats

#: Seconds between the beat holder's reads of the trigger requests.
POLL = 0.5

# KEYS: beat:triggers, triggered.  ARGV: entry, now in ms.
# The request's time in ms, made unique per entry (two triggers in one ms are two ticks);
# returns the request as the list holds it.
_TRIGGER = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local ms = math.max(tonumber(ARGV[2]), last + 1)
redis.call('HSET', KEYS[2], ARGV[1], ms)
local member = cjson.encode({ARGV[1], ms})
redis.call('RPUSH', KEYS[1], member)
return member
"""


# KEYS: paused, resumed.  ARGV: entry, now.
# Resumes the entry; returns when it was paused (nil: it was not). A beat that takes the
# lock later (one was down during the pause) reads the resume's time: the ticks due
# until then are skipped (paused), not caught up: no burst of the paused time.
_RESUME = """
local since = redis.call('HGET', KEYS[1], ARGV[1])
if not since then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return since
"""


@dataclass(frozen=True)
class Trigger:
    """A tick asked for by hand: the request as ``beat:triggers`` holds it."""

    member: str
    entry: str
    at: float

    @classmethod
    def parse(cls, member: str) -> Trigger:
        entry, ms = json.loads(member)
        return cls(member, str(entry), int(ms) / 1000)

    @property
    def tick_id(self) -> str:
        return message_id(self.entry, self.at, manual=True)


@dataclass(frozen=True)
class State:
    """What ``pubtasks schedule list`` shows besides the counters, read in one round trip."""

    holder: str | None
    holder_ttl: float | None
    paused: dict[str, float]
    resumed: dict[str, float]
    triggered: dict[str, float]
    last: dict[str, float]
    waiting: int  # trigger requests not yet fired


class Control:
    """Pause, resume and trigger entries; read their state (the CLI and beat)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.keys = stats.keys
        self._trigger = stats.client.register_script(_TRIGGER)
        self._resume = stats.client.register_script(_RESUME)

    def pause(self, entry: str, now: float) -> float | None:
        """Pause ``entry``; the time it was already paused at, if it was."""
        c, k = self.stats.client, self.keys
        with self.stats.converted():
            if c.hsetnx(k.paused, entry, now):
                return None
            return float(c.hget(k.paused, entry) or now)

    def resume(self, entry: str, now: float) -> float | None:
        """Resume ``entry``; when it had been paused (None: it was not)."""
        k = self.keys
        with self.stats.converted():
            since = self._resume(keys=[k.paused, k.resumed], args=[entry, now])
        return None if since is None else float(since)

    def trigger(self, entry: str, now: float) -> Trigger:
        """Ask the beat holder for one extra tick of ``entry`` now."""
        k = self.keys
        with self.stats.converted():
            keys = [k.beat_triggers, k.triggered]
            member = self._trigger(keys=keys, args=[entry, int(now * 1000)])
        return Trigger.parse(str(member))

    def triggers(self, limit: int = 100) -> list[Trigger]:
        """The requests waiting, oldest first (beat)."""
        with self.stats.converted():
            members = self.stats.client.lrange(self.keys.beat_triggers, 0, limit - 1)
        found = []
        for m in members:
            try:
                found.append(Trigger.parse(str(m)))
            except (ValueError, TypeError):
                self.drop(str(m))
        return found

    def drop(self, member: str) -> None:
        """Forget a request beat cannot fire (an entry it does not have)."""
        with self.stats.converted():
            self.stats.client.lrem(self.keys.beat_triggers, 0, member)

    def state(self, entries: list[str]) -> State:
        k = self.keys
        with self.stats.converted(), self.stats.client.pipeline(transaction=False) as pipe:
            pipe.get(k.beat_lock)
            pipe.pttl(k.beat_lock)
            pipe.hgetall(k.paused)
            pipe.hgetall(k.resumed)
            pipe.hgetall(k.triggered)
            pipe.llen(k.beat_triggers)
            if entries:  # one command for all (10,000 entries: one reply to parse)
                pipe.mget([k.beat_last(name) for name in entries])
            holder, ttl, paused, resumed, triggered, waiting, *read = pipe.execute()
        last = read[0] if read else []
        return State(
            holder=None if holder is None else str(holder),
            holder_ttl=ttl / 1000 if holder is not None and ttl and ttl > 0 else None,
            paused={str(n): float(v) for n, v in paused.items()},
            resumed={str(n): float(v) for n, v in resumed.items()},
            triggered={str(n): int(v) / 1000 for n, v in triggered.items()},
            last={n: float(v) for n, v in zip(entries, last, strict=True) if v is not None},
            waiting=int(waiting),
        )
