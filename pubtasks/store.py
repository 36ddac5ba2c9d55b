"""The Redis boundary: the connection (one Redis, or the master Sentinel names), the
replica wait (``WAIT``), and the conversion of Redis errors to ``StatsUnavailable``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from pubtasks import defaults, timing
from pubtasks.errors import NotReplicated, StatsUnavailable
from pubtasks.sentinel import close_client, master_client
from pubtasks.urls import is_sentinel, mask_url

log = logging.getLogger(__name__)


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
        "retry": Retry(
            ExponentialBackoff(cap=timing.REDIS_RETRY.most, base=timing.REDIS_RETRY.first), retries
        ),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 15,
    }
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    return master_client(url, master_name, options)


@contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Redis errors inside become ``StatsUnavailable``, the URL masked."""
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

    RECHECK = timing.REPLICA_RECHECK

    def __init__(
        self,
        wanted: int,
        clock: Callable[[], float] = time.monotonic,
        grace: float = timing.REPLICA_GRACE,
    ) -> None:
        self.wanted = wanted
        self.clock = clock
        self.grace = grace
        self.short_until = 0.0
        self.short_since: float | None = None  # when replicas were first short (None: they answer)

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
            if self.short_since is not None:
                log.warning("Redis replication is back: %d replica(s) acknowledge writes", count)
            self.short_since = None
            return
        self.short_until = self.clock() + self.RECHECK
        if self.short_since is None:
            self.short_since = self.clock()
            log.warning(
                "Redis: %d of %d replica(s) acknowledged a counter write within %g s; "
                "counting goes on, but a failover now could lose the latest counts",
                count,
                self.wanted,
                timing.REDIS_WAIT_TIMEOUT,
            )


class Store:
    """One Redis database as pubtasks talks to it: the client, the replica wait, and
    Redis errors turned into ``StatsUnavailable`` (no ``redis.RedisError`` leaves it)."""

    def __init__(self, client: redis.Redis, url: str = "", wait_replicas: int = 0) -> None:
        self.client = client
        self._url = url
        self.replication = Replication(wait_replicas)

    def close(self) -> None:
        """Close the connections: to Redis, and to the Sentinels that named the master."""
        close_client(self.client)

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
                f"{timing.REDIS_WAIT_TIMEOUT:g} s (a failover underway?); held until one "
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
                        pipe.wait(wait, int(timing.REDIS_WAIT_TIMEOUT * 1000))
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
        with redis_errors(self._url):
            return self._write(script, keys, args)

    def converted(self) -> AbstractContextManager[None]:
        """Redis errors inside become ``StatsUnavailable``, the URL masked (``control``)."""
        return redis_errors(self._url)

    def ping(self) -> None:
        with redis_errors(self._url):
            self.client.ping()
