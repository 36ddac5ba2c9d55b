"""Run-time entries, kept in Redis beside the statistics (``pubtasks schedule add``...).

Each run-time entry is one field of ``schedule:entries``: its recipe (``specs``) and
when it was added and last changed. Every change (add, edit, remove, or an ``apply``
of many, all in one Lua call, all or nothing) bumps ``schedule:version`` and stamps
the entries it changed with that version in ``schedule:revs``.

The beat holder reads ``schedule:version`` every ``POLL`` seconds and, when it moved,
reads the entries again (``beat.Scheduler``). Each tick is numbered only if the
entry's version is still the one beat fired it with (``Stats.tick_number``), so a
tick numbered after a change has the changed recipe, and a removed entry numbers
nothing more, whatever beat has read. A removed entry's last recipe is kept in
``schedule:removed``, and its counters and history stay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pubtasks.errors import ConfigError
from pubtasks.specs import dumps
from pubtasks.stats import Stats

# KEYS: schedule:entries, schedule:revs, schedule:version, schedule:removed,
#       schedule:removed_at, schedule:runs.
# ARGV: now, then per change: op (add, edit, remove), name, the stored JSON, the
#       version the caller read ('' for add).
# All or nothing: {-1, name} if an added one exists, {-2, name} if an edited or removed
# one does not, {-3, name} if one changed since the caller read it; else {version, ''}.
_CHANGE = """
for i = 2, #ARGV, 4 do
  local op, name = ARGV[i], ARGV[i + 1]
  local rev = redis.call('HGET', KEYS[2], name)
  if op == 'add' then
    if rev then return {-1, name} end
  elseif not rev then
    return {-2, name}
  elseif rev ~= ARGV[i + 3] then
    return {-3, name}
  end
end
local version = redis.call('INCR', KEYS[3])
for i = 2, #ARGV, 4 do
  local op, name = ARGV[i], ARGV[i + 1]
  if op == 'remove' then
    redis.call('HSET', KEYS[4], name, redis.call('HGET', KEYS[1], name))
    redis.call('HSET', KEYS[5], name, ARGV[1])
    redis.call('HDEL', KEYS[1], name)
    redis.call('HDEL', KEYS[2], name)
  else
    redis.call('HSET', KEYS[1], name, ARGV[i + 2])
    redis.call('HSET', KEYS[2], name, version)
    if op == 'add' then
      redis.call('HDEL', KEYS[4], name)
      redis.call('HDEL', KEYS[5], name)
      redis.call('HDEL', KEYS[6], name)
    end
  end
end
return {version, ''}
"""


@dataclass(frozen=True)
class Stored:
    """A run-time entry as Redis holds it: its recipe, when it was added and last
    changed, and the version of that change."""

    spec: dict[str, Any]
    added_at: float
    changed_at: float
    rev: str = ""

    def dumps(self) -> str:
        return json.dumps(
            {"spec": self.spec, "added_at": self.added_at, "changed_at": self.changed_at},
            sort_keys=True,
            default=str,
        )

    @classmethod
    def loads(cls, raw: str, rev: str = "") -> Stored:
        found = json.loads(raw)
        return cls(found["spec"], float(found["added_at"]), float(found["changed_at"]), rev)

    def same_recipe(self, spec: Mapping[str, Any]) -> bool:
        return dumps(self.spec) == dumps(spec)


@dataclass(frozen=True)
class Change:
    """One change of ``apply``: ``op`` is add, edit or remove."""

    op: str
    name: str
    stored: Stored | None = None
    rev: str = ""


@dataclass(frozen=True)
class Loaded:
    version: int
    entries: dict[str, Stored]


class Catalog:
    """The run-time entries of one prefix: read them, and change them atomically."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.keys = stats.keys
        self._change = stats.client.register_script(_CHANGE)

    def version(self) -> int:
        with self.stats.converted():
            return int(self.stats.client.get(self.keys.schedule_version) or 0)

    def load(self) -> Loaded:
        """Every run-time entry, with the version they make up (one transaction)."""
        k = self.keys
        with self.stats.converted(), self.stats.client.pipeline(transaction=True) as pipe:
            pipe.get(k.schedule_version)
            pipe.hgetall(k.schedule_entries)
            pipe.hgetall(k.schedule_revs)
            version, raw, revs = pipe.execute()
        entries = {str(n): Stored.loads(str(v), str(revs.get(n, ""))) for n, v in raw.items()}
        return Loaded(int(version or 0), entries)

    def get(self, name: str) -> Stored | None:
        k = self.keys
        with self.stats.converted(), self.stats.client.pipeline(transaction=True) as pipe:
            pipe.hget(k.schedule_entries, name)
            pipe.hget(k.schedule_revs, name)
            raw, rev = pipe.execute()
        return None if raw is None else Stored.loads(str(raw), str(rev or ""))

    def removed(self, name: str) -> tuple[Stored, float] | None:
        """A removed entry's last recipe and when it was removed."""
        k = self.keys
        with self.stats.converted(), self.stats.client.pipeline(transaction=False) as pipe:
            pipe.hget(k.schedule_removed, name)
            pipe.hget(k.schedule_removed_at, name)
            raw, at = pipe.execute()
        if raw is None or at is None:
            return None
        return Stored.loads(str(raw)), float(at)

    def runs(self, names: Iterable[str]) -> dict[str, int]:
        """Ticks numbered per entry (``max_runs``)."""
        wanted = list(names)
        if not wanted:
            return {}
        with self.stats.converted():
            found = self.stats.client.hmget(self.keys.schedule_runs, wanted)
        return {n: int(v or 0) for n, v in zip(wanted, found, strict=True)}

    def change(self, changes: Sequence[Change], now: float) -> int:
        """Make ``changes``, all or none; the new version. ``ConfigError`` (nothing
        stored) if one cannot be made."""
        k = self.keys
        keys = [k.schedule_entries, k.schedule_revs, k.schedule_version]
        keys += [k.schedule_removed, k.schedule_removed_at, k.schedule_runs]
        args: list[Any] = [now]
        for c in changes:
            args += [c.op, c.name, "" if c.stored is None else c.stored.dumps(), c.rev]
        code, name = self.stats.run(self._change, keys, args)
        code, name = int(code), str(name)
        if code == -1:
            raise ConfigError(
                f"schedule: run-time entry {name!r} exists; change it with 'pubtasks schedule "
                "edit', or remove it first"
            )
        if code == -2:
            raise ConfigError(
                f"schedule: there is no run-time entry {name!r}; 'pubtasks schedule list' "
                "shows the entries"
            )
        if code == -3:
            raise ConfigError(
                f"schedule: run-time entry {name!r} was changed by someone else meanwhile; "
                "run the command again"
            )
        return code
