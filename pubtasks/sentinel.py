"""Redis through Sentinel: **the one redis-py seam**.

A ``sentinel://h1:26379;sentinel://h2:26379/0`` ``REDIS_URL`` names the
Sentinels; the client is redis-py's ``Sentinel(...).master_for(REDIS_MASTER_NAME)``,
whose connections ask the Sentinels where the master is when they connect.

Past the public API, once, and why: redis-py (up to 8.1 at least) asks the
Sentinels only in ``connect()``. When a command fails on a dead master, its
retries reconnect through ``connect_check_health()`` to the address of the last
connect, the dead master, until the retries run out, so the first command after
a failover fails after its whole retry budget although the new master was named
seconds before (redis/redis-py#3874, open). ``FollowingConnection`` asks the
Sentinels on every connect, retries included, and leaves the retrying to the
command's own retry (with its backoff) rather than retrying the dead address. It
overrides ``connect_check_health()`` and reads ``_sock`` (connected or not), as
redis-py's own ``SentinelManagedConnection`` does; the public alternative, a retry
loop of our own around every Redis call, would duplicate redis-py's retry.

And ``close_client`` and ``agreement`` read the pool's ``sentinel_manager`` and
``service_name``: the first to close the Sentinels' own connections, which the master
client's ``close()`` leaves open, the second to ask them about the master (redis-py
has no public way to reach the Sentinels from the client; without it, each closed
client leaks a connection per Sentinel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection


@dataclass(frozen=True)
class Sentinels:
    """What a ``sentinel://h1:26379;sentinel://h2:26380/0`` URL says."""

    hosts: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = None  # the master's (as Celery's transport takes it)


def sentinels(url: str) -> Sentinels:
    """The Sentinels of a ``sentinel://`` URL; the db, user and password of any part."""
    parts = [urlsplit(part.strip()) for part in url.split(";")]
    hosts = [(p.hostname or "localhost", p.port or 26379) for p in parts]
    db = next((int(p.path.strip("/")) for p in parts if p.path.strip("/").isdigit()), 0)
    username = next((unquote(p.username) for p in parts if p.username), None)
    password = next((unquote(p.password) for p in parts if p.password), None)
    return Sentinels(hosts, db, username, password)


class FollowingConnection(SentinelManagedConnection):
    """A connection to the master that asks the Sentinels where it is on every connect."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        # One attempt at that address: the command's retry tries again, asking again.
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


def master_client(url: str, master_name: str, options: dict[str, Any]) -> redis.Redis:
    """A client of the master the Sentinels of ``url`` name ``master_name``."""
    where = sentinels(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        where.hosts,
        # One try each: a Sentinel that does not answer is skipped for the next (the
        # master's address, ``agreement``), not retried for seconds.
        sentinel_kwargs={
            "socket_connect_timeout": 1,
            "socket_timeout": 1,
            "retry": Retry(NoBackoff(), 0),
        },
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        master_name,
        connection_class=FollowingConnection,
        db=where.db,
        username=where.username,
        password=where.password,
        **options,
    )
    return client


@dataclass(frozen=True)
class Agreement:
    """What most of the Sentinels say of the master (``agreement``)."""

    run_id: str | None  # the master most of them name (None: no majority answers alike)
    settled: bool  # ...up, calling itself master, no failover underway, no replica up


def _flags(found: Any) -> set[str]:
    flags = found.get("flags", "")
    return set(flags.split(",")) if isinstance(flags, str) else {str(f) for f in flags}


def agreement(client: redis.Redis) -> Agreement:
    """Ask ``client``'s Sentinels about its master: the run id most of them name, and
    whether it is settled: every Sentinel that answers names it, seen up and calling
    itself master, with no failover underway and every replica they list for it down
    (none that a failover could promote without the latest writes). Most means more
    than half of all the Sentinels (those of the URL, or as many as they know of, if
    more); one that does not answer counts against. Each Sentinel gets one try, within
    its 1 s timeouts (``master_client``)."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    name = getattr(client.connection_pool, "service_name", None)
    if manager is None or name is None:
        return Agreement(None, False)
    named: list[tuple[str, bool]] = []
    total = len(manager.sentinels)
    for sentinel in manager.sentinels:
        try:
            master: Any = sentinel.sentinel_master(name)
            run_id = str(master.get("runid") or "")
            plain = _flags(master) == {"master"} and master.get("role-reported") == "master"
            if plain:
                replicas: Any = sentinel.sentinel_slaves(name)
                plain = all(_flags(r) & {"s_down", "o_down"} for r in replicas)
        except redis.RedisError:
            continue
        total = max(total, int(master.get("num-other-sentinels", 0)) + 1)
        if run_id:
            named.append((run_id, plain))
    for run_id in {r for r, _ in named}:
        if sum(r == run_id for r, _ in named) > total // 2:
            # settled only if no Sentinel that answered says otherwise (a failover's
            # leader is the one to see it underway, or a replica up, before the others)
            return Agreement(run_id, all(r == run_id and plain for r, plain in named))
    return Agreement(None, False)


def close_client(client: redis.Redis) -> None:
    """Close ``client``, and, for a master Sentinel named, the Sentinels' connections."""
    client.close()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()
