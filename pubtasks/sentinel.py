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

And ``close_client`` and ``agreed_master`` read the pool's ``sentinel_manager`` and
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
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        where.hosts,
        sentinel_kwargs={"socket_connect_timeout": 1, "socket_timeout": 1},
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        master_name,
        connection_class=FollowingConnection,
        db=where.db,
        username=where.username,
        password=where.password,
        **options,
    )
    return client


def agreed_master(client: redis.Redis) -> str | None:
    """The run id of the master that most of ``client``'s Sentinels name, each seeing it
    up, reporting itself master and no failover underway; None when they do not agree
    (or ``client`` is not named by Sentinels). A Sentinel that does not answer counts
    against: most means more than half of all of them, as a failover needs."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    name = getattr(client.connection_pool, "service_name", None)
    if manager is None or name is None:
        return None
    named: list[str] = []
    for sentinel in manager.sentinels:
        try:
            master: Any = sentinel.sentinel_master(name)
        except redis.RedisError:
            continue
        flags = set(str(master.get("flags", "")).split(","))
        if flags == {"master"} and master.get("role-reported") == "master" and master.get("runid"):
            named.append(str(master["runid"]))
    for run_id in set(named):
        if named.count(run_id) > len(manager.sentinels) // 2:
            return run_id
    return None


def close_client(client: redis.Redis) -> None:
    """Close ``client``, and, for a master Sentinel named, the Sentinels' connections."""
    client.close()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()
