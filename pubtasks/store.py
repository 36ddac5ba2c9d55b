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
from pubtasks.sentinel import Agreement, agreement, close_client, master_client
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

    A write that must not be lost (beat numbering a tick it is about to send) is
    refused (``holding``) while replicas are short, until one of these:

    - the Sentinels (``ask``) settle on the Redis the write landed on (its run id,
      learned in the same round trip): most of them name it the master, up and
      calling itself master, with no failover underway and every replica they list
      for it down. No replica is then there to be promoted without the write; it is
      lost only if that master dies and a replica that was down comes back and is
      promoted before it syncs (a second failure). Writes on a Redis that a failover
      underway is about to demote, on an old master that came back and still calls
      itself master, or beside a replica that is up but not acknowledging, are held;
    - ``grace`` (``REPLICA_GRACE``) passes since replicas were first short: without
      Sentinels to ask (replicas of a plain Redis), a replica gone for good. Not when
      the Sentinels name another Redis the master: that write is always held, and the
      store connects again (``elsewhere``).
    """

    RECHECK = timing.REPLICA_RECHECK
    ASK_EVERY = 1.0  # how long what the Sentinels said is taken as still true

    def __init__(
        self,
        wanted: int,
        clock: Callable[[], float] = time.monotonic,
        grace: float = timing.REPLICA_GRACE,
        ask: Callable[[], Agreement] | None = None,
    ) -> None:
        self.wanted = wanted
        self.clock = clock
        self.grace = grace
        self.ask = ask
        self.short_until = 0.0
        self.short_since: float | None = None  # when replicas were first short (None: they answer)
        self.landed_on: str | None = None  # the run id the last durable write landed on
        self._asked: tuple[float, Agreement] | None = None
        self._settled_said = False

    def replicas(self, durable: bool = False) -> int:
        """Replicas to wait for on the next write (0: do not wait now); a ``durable``
        write waits while ``holding``."""
        if not self.wanted:
            return 0
        if self.clock() < self.short_until and not (durable and self.holding()):
            return 0
        return self.wanted

    def asks_run_id(self, durable: bool) -> bool:
        """Whether a ``durable`` write learns the run id of the Redis it lands on (to
        compare with the Sentinels', should no replica acknowledge it)."""
        return durable and self.ask is not None and self.wanted > 0

    def holding(self) -> bool:
        """Whether a durable write that replicas did not acknowledge, landed where the
        last one did (``landed_on``), is refused now."""
        if self.short_since is None:
            return True
        view = self._agreement()
        if self.elsewhere():
            return True
        if view is not None and view.settled and view.run_id == self.landed_on:
            if not self._settled_said:
                self._settled_said = True
                log.warning(
                    "Redis: the Sentinels agree that the master (run id %s) has no replica "
                    "up and no failover underway; numbering goes on without a replica",
                    self.landed_on,
                )
            return False
        return self.clock() - self.short_since < self.grace

    def elsewhere(self) -> bool:
        """Whether most Sentinels name as the master a Redis other than the one the last
        durable write landed on (a connection kept to a demoted or cut-off master)."""
        view = self._agreement()
        return bool(view and view.run_id and self.landed_on and view.run_id != self.landed_on)

    def _agreement(self) -> Agreement | None:
        if self.ask is None:
            return None
        if self._asked is None or self.clock() - self._asked[0] >= self.ASK_EVERY:
            view = self.ask()
            self._asked = (self.clock(), view)  # stamped once answered: asking takes time
        return self._asked[1]

    def acknowledged(self, count: int) -> None:
        if count >= self.wanted:
            if self.short_since is not None:
                log.warning("Redis replication is back: %d replica(s) acknowledge writes", count)
            self.short_since = None
            self._asked = None
            self._settled_said = False
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
        ask = (lambda: agreement(client)) if is_sentinel(url) else None
        self.replication = Replication(wait_replicas, ask=ask)
        self._info_refused = False

    def close(self) -> None:
        """Close the connections: to Redis, and to the Sentinels that named the master."""
        close_client(self.client)

    def _write(self, script: Any, keys: list[Any], args: list[Any], durable: bool = False) -> Any:
        """Run a counting script; with replicas to wait for, WAIT in the same round trip.
        A ``durable`` write that the replicas did not acknowledge raises ``NotReplicated``
        while the replication holds it (the script ran: it must be idempotent)."""
        r = self.replication
        if not r.replicas(durable) and not r.asks_run_id(durable):
            return script(keys=keys, args=args)  # redis-py reloads a script Redis lacks
        queue = lambda pipe: script(keys=keys, args=args, client=pipe)  # noqa: E731
        replies, acked = self._replicated(queue, durable)
        if durable and not acked and r.holding():
            if r.elsewhere():  # ask the Sentinels where the master is on the next try
                self.client.connection_pool.disconnect()
                raise NotReplicated(
                    f"Redis at {mask_url(self._url)}: the write landed on a Redis the "
                    "Sentinels no longer name the master; held, and connecting again"
                )
            raise NotReplicated(
                f"Redis at {mask_url(self._url)}: no replica acknowledged the write within "
                f"{timing.REDIS_WAIT_TIMEOUT:g} s (a failover underway?); held until one "
                "does or the Sentinels settle, for up to "
                f"REPLICA_GRACE={r.grace:g} s"
            )
        return replies[0]

    def _replicated(
        self, queue: Callable[[Any], object], durable: bool = False
    ) -> tuple[list[Any], bool]:
        """Run the commands ``queue`` puts in a pipeline, then WAIT for the replicas (if
        any are wanted now), in one round trip: their replies, without WAIT's, and
        whether the replicas acknowledged them (True when none is wanted). A durable
        write while replicas are short also learns the run id of the Redis it landed
        on (``Replication.landed_on``), in the same round trip."""
        r = self.replication
        wait = r.replicas(durable)
        ask = r.asks_run_id(durable)
        replies = self._pipelined(queue, wait, ask)
        count = int(replies.pop()) if wait else None
        if durable:  # unknown unless asked now: a Redis this write may not have reached
            r.landed_on = self._run_id(replies.pop()) if ask else None
        if count is None:  # acknowledged only if no replica is wanted at all
            return replies, not r.wanted
        r.acknowledged(count)
        return replies, count >= wait

    def _run_id(self, info: Any) -> str | None:
        """The run id in an ``INFO server`` reply; None (said once) if it was refused,
        as an ACL without ``@dangerous`` refuses it: the hold then waits for replicas or
        the grace, as without Sentinels."""
        if isinstance(info, Exception):
            if not self._info_refused:
                self._info_refused = True
                log.warning(
                    "Redis refused INFO (%s): a numbering no replica acknowledges is held "
                    "for REPLICA_GRACE, without asking the Sentinels; allow INFO to end "
                    "the hold once they agree",
                    info,
                )
            return None
        return str(info.get("run_id") or "") or None

    def _pipelined(self, queue: Callable[[Any], object], wait: int, ask: bool) -> list[Any]:
        for attempt in (1, 2):
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    queue(pipe)
                    if ask:
                        pipe.info("server")
                    if wait:
                        pipe.wait(wait, int(timing.REDIS_WAIT_TIMEOUT * 1000))
                    replies = list(pipe.execute(raise_on_error=False))
                info_at = len(replies) - (2 if wait else 1) if ask else None
                for i, reply in enumerate(replies):
                    if isinstance(reply, Exception) and i != info_at:
                        raise reply  # as execute() would have: the first error
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

    def replicated(
        self, queue: Callable[[Any], object], durable: bool = False
    ) -> tuple[list[Any], bool]:
        """``_replicated`` for another module's writes (``sent``): Redis errors as
        ``StatsUnavailable``."""
        with redis_errors(self._url):
            return self._replicated(queue, durable)

    def converted(self) -> AbstractContextManager[None]:
        """Redis errors inside become ``StatsUnavailable``, the URL masked (``control``)."""
        return redis_errors(self._url)

    def refusal(self, probe: str, keys: list[str], replicas: bool) -> str | None:
        """What this Redis user may not do of what pubtasks needs (its ACL), or None:
        a read of each of ``keys`` (the rules give a pattern reads and writes alike),
        ``probe`` (``acl.PROBE``) on the first, then what a script cannot send: a
        transaction, WATCH, and with ``replicas`` INFO and WAIT."""
        with redis_errors(self._url):
            for key in keys:
                try:
                    self.client.exists(key)
                except redis.exceptions.NoPermissionError as exc:
                    return f"key {key!r}: NOPERM {exc}"
            try:
                refused = self.client.eval(probe, 1, keys[0])
                if refused:
                    return str(refused)
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.watch(keys[0])  # type: ignore[no-untyped-call]  # WATCH, MULTI, EXEC
                    pipe.multi()
                    pipe.exists(keys[0])
                    pipe.execute()
                if replicas:
                    self.client.info("server")
                    self.client.wait(0, 0)
            except redis.exceptions.NoPermissionError as exc:
                return f"NOPERM {exc}"
        return None

    @property
    def where(self) -> str:
        """The Redis URL, masked."""
        return mask_url(self._url)

    def ping(self) -> None:
        with redis_errors(self._url):
            self.client.ping()
