"""Every duration pubtasks waits, keeps something for or times out after, in seconds,
and the invariants between them (``INVARIANTS``, asserted by the tests).

The user's knobs (``TICK_DEADLINE``, ``CONFIRM_TIMEOUT``, ``CATCH_UP_WITHIN``...)
are in ``defaults``; the invariants say which of their defaults they rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pubtasks import defaults


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry ``n`` (from 1): ``first``, then growing by
    ``factor`` and ``step`` each time, at most ``most``. kombu's reconnect is linear
    (``factor`` 1, its ``interval_step``); redis-py's ``ExponentialBackoff`` doubles
    (``factor`` 2). The one vocabulary for every retry pubtasks makes."""

    first: float
    most: float
    factor: float = 1.0
    step: float = 0.0

    def delay(self, n: int) -> float:
        """Seconds before retry ``n`` (1 is the first retry)."""
        k = max(min(n, 64), 1) - 1
        return float(min(self.first * self.factor**k + self.step * k, self.most))

    def kombu(self) -> dict[str, Any]:
        """As kombu's ``ensure_connection`` takes it (linear only)."""
        if self.factor != 1.0:
            raise ValueError("kombu's reconnect backoff is linear: factor must be 1")
        return {"interval_start": self.first, "interval_step": self.step, "interval_max": self.most}


#: Between connection attempts to RabbitMQ (kombu's ``ensure_connection``) and the
#: start-up ping of Redis: 0, 0.25, 0.5, 0.75, then 1 s.
RECONNECT: Final = Backoff(first=0.0, step=0.25, most=1.0)
#: Between redis-py's retries of a command after a lost connection: 0.05 s doubling to
#: 1 s (its ``ExponentialBackoff(cap=1.0, base=0.05)``).
REDIS_RETRY: Final = Backoff(first=0.05, factor=2.0, most=1.0)
#: Before a tick's next attempt after a nack: 0.5, 1, 2, then 4 s (7.5 s before the
#: fifth attempt, longer than a quorum queue's leader election).
NACK_BACKOFF: Final = Backoff(first=0.5, factor=2.0, most=4.0)
#: Before a returned message is published again: 0.1 s doubling to 2 s.
RETURN_BACKOFF: Final = Backoff(first=0.1, factor=2.0, most=2.0)
#: Before a tick whose counting Redis refused is tried again (a Celery retry).
STATS_RETRY: Final = Backoff(first=1.0, most=1.0)

# -- Celery's Redis transport ---------------------------------------------------------------
#: Redis redelivers an unacknowledged task after this; it must stay longer than a tick
#: can take (TICK_DEADLINE) or a slow tick runs twice (set in ``pubtasks.celery``).
VISIBILITY_TIMEOUT: Final = 3600

# -- Redis: marks and records kept (``keys``) -----------------------------------------------
#: A failed message's marker (its number and reason).
FAILED_TTL: Final = 24 * 3600
#: A tick's done marks. A tick is redelivered within seconds of its worker's death
#: (``supervision``), or at worst after the visibility timeout: the marks outlive both.
DONE_TTL: Final = 2 * 3600
#: At most how long a tick's numbers are kept for asking again (``beat:numbered``): a
#: beat fires an older tick again only if it took the lock from one an hour stuck.
NUMBERS_KEPT_FOR: Final = 3600.0

# -- Redis replication (``store``) ----------------------------------------------------------
#: How long a counter write waits for its replicas (REDIS_WAIT_REPLICAS) before going on.
REDIS_WAIT_TIMEOUT: Final = 0.5
#: How long writes stop waiting for replicas after a short WAIT, before they look again.
REPLICA_RECHECK: Final = 5.0
#: How long beat holds, at most, a tick whose number no replica has acknowledged (a
#: failover underway, the old master not yet back as a replica). With Sentinels the hold
#: ends sooner, once most of them agree that the Redis written to is the master with no
#: failover underway (``store.Replication``); the grace bounds it without them. A fixed
#: 5 s alone was too short: a restarted old master was seen winning its role back,
#: taking what the new one took alone, and a run of master kills gave numbers twice.
REPLICA_GRACE: Final = 30.0

# -- Beat --------------------------------------------------------------------------------
#: The beat lock lives this long without renewal: another beat takes over within this.
LOCK_TTL: Final = 10.0
#: A beat silent this long (its pulse) is hung, and killed. Longer than beat's longest
#: sleep between two ticks (1 s) and its slowest call; with the supervisor's look every
#: second, a hang is handled within 30 s: seen 20 to 22 s after the last stamp.
HUNG_AFTER: Final = 20.0

# -- Publishing a tick (``policy``, ``rabbitmq``, ``lanes``) ---------------------------------
#: An attempt may spend this long connecting to RabbitMQ before the tick is given back
#: to wait: a worker process is never held through an outage.
CONNECT_BUDGET: Final = 1.0
#: A tick given back waits this long before it tries an unreachable RabbitMQ again.
UNREACHABLE_DELAY: Final = 1.0
NACK_BACKOFF_MAX: Final = NACK_BACKOFF.most
RETURN_BACKOFF_MAX: Final = RETURN_BACKOFF.most
#: A channel is kept at least this long before a nack renews it.
RENEW_EVERY: Final = 1.0
#: A lane outlives its holder's countdown by this before anyone may take it.
LANE_TTL: Final = 30.0

# -- The worker's supervisor (``supervision``) ----------------------------------------------
#: Between two looks (beat, heartbeat).
HEARTBEAT: Final = 1.0
#: A worker counts as alive this long after its last heartbeat.
WORKER_TTL: Final = 10.0
#: Between two searches for orphaned deliveries.
SWEEP: Final = 2.0
#: A delivery unheld by any live worker this long is given back. Above every countdown
#: a tick is retried with, since Celery 5.6 does not list a task waiting for its
#: countdown among those its worker holds.
GIVE_BACK_GRACE: Final = 5.0
#: A tick beat sent that is, this long after, neither done, queued nor reserved was
#: lost in Redis, and is sent again.
RESEND_AFTER: Final = 30.0
#: Between two searches for lost ticks.
RECONCILE: Final = 5.0

# -- Health (``health``) ------------------------------------------------------------------
#: A tick may take this long from its time on the schedule to its confirm before its
#: entry is unhealthy: beat's wake-up, Celery's queue in Redis, a retried publish.
HEALTH_GRACE: Final = 10.0
#: A confirm may seem to precede its tick by this (the worker's clock against beat's).
HEALTH_SKEW: Final = 1.0


#: What the durations above must keep true, each with why.
INVARIANTS: Final = (
    (
        "a slow tick is not redelivered while it may still publish",
        VISIBILITY_TIMEOUT > defaults.TICK_DEADLINE,
    ),
    ("a tick redelivered late still finds its done marks", DONE_TTL > VISIBILITY_TIMEOUT),
    ("a failed marker outlives the done marks", FAILED_TTL >= DONE_TTL),
    (
        "a tick that waits for its countdown is not given back meanwhile",
        max(NACK_BACKOFF_MAX, RETURN_BACKOFF_MAX, UNREACHABLE_DELAY) < GIVE_BACK_GRACE,
    ),
    ("a lane outlives its holder's countdown", LANE_TTL > NACK_BACKOFF_MAX),
    (
        "a tick given back by a live worker is not first resent as lost",
        RESEND_AFTER > WORKER_TTL + GIVE_BACK_GRACE + SWEEP,
    ),
    ("a worker's heartbeat is renewed several times within its life", WORKER_TTL >= 5 * HEARTBEAT),
    (
        "a tick held for its replica is fired, not skipped, within the catch-up window",
        REPLICA_GRACE < defaults.CATCH_UP_WITHIN,
    ),
    (
        "a tick fired again within the catch-up window keeps its numbers",
        NUMBERS_KEPT_FOR >= defaults.CATCH_UP_WITHIN,
    ),
    (
        "a write held for its replica does not look like a hung beat",
        REDIS_WAIT_TIMEOUT < HUNG_AFTER,
    ),
)
