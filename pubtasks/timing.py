"""Every duration pubtasks waits, keeps something for or times out after, in seconds,
and the invariants between them (``INVARIANTS``, asserted by the tests).

The user's knobs (``TICK_DEADLINE``, ``CONFIRM_TIMEOUT``, ``CATCH_UP_WITHIN``...)
are in ``defaults``; the invariants say which of their defaults they rely on.
"""

from __future__ import annotations

from typing import Final

from pubtasks import defaults

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
#: How long beat holds a tick whose number no replica has acknowledged (a failover
#: underway, the old master not yet back as a replica) before it goes on without.
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
#: The longest nack backoff (0.5, 1, 2, then this).
NACK_BACKOFF_MAX: Final = 4.0
#: The longest return backoff (0.1 doubling to this).
RETURN_BACKOFF_MAX: Final = 2.0
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
