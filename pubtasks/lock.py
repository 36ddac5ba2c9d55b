"""The beat lock: one beat fires ticks at a time, across every worker and machine.

``celery -A pubtasks worker -B`` on several machines starts several beats. Each
tries to hold one Redis key (``SET NX PX``); the holder renews it every
``ttl / 5`` seconds and is the only one that fires. If it dies, the key expires
after ``ttl`` and another beat takes over where it stopped (see ``beat.py``).
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

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


def owner_id() -> str:
    """Names the holder: which host and process holds the beat lock."""
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


class BeatLock:
    """A Redis lock with a time to live, renewed by its holder."""

    def __init__(self, client: redis.Redis, key: str, ttl: float, owner: str) -> None:
        self.client, self.key, self.owner = client, key, owner
        self.ttl_ms = int(ttl * 1000)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.owner])

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return None if value is None else str(value)
