"""The beat lock: one beat fires ticks at a time, across every worker and machine.

``celery -A pubtasks worker -B`` on several machines starts several beats. Each
tries to hold one Redis key (``SET NX PX``); the holder renews it every
``ttl / 5`` seconds and is the only one that fires. If it dies, the key expires
after ``ttl`` and another beat takes over where it stopped (see ``beat.py``).
"""

from __future__ import annotations

from pubtasks.store import Store

# Renew or release only a lock we still hold.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BeatLock:
    """A Redis lock with a time to live, renewed by its holder. Through the ``Store``:
    Redis errors come out as ``StatsUnavailable``."""

    def __init__(self, store: Store, key: str, ttl: float, owner: str) -> None:
        self.store, self.key, self.owner = store, key, owner
        self.ttl_ms = int(ttl * 1000)
        self._renew = store.client.register_script(_RENEW)
        self._release = store.client.register_script(_RELEASE)

    def acquire(self) -> bool:
        with self.store.converted():
            return bool(self.store.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        with self.store.converted():
            return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        with self.store.converted():
            self._release(keys=[self.key], args=[self.owner])

    def holder(self) -> str | None:
        with self.store.converted():
            value = self.store.client.get(self.key)
        return None if value is None else str(value)
