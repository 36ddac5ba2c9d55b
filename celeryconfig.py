"""pubtasks configuration: the schedule, the topology, and the publish knobs.

The worker reads this module when it starts (``celery -A pubtasks worker -B``
from this directory). Environment variables stay the way to set the
connections and the interval: AMQP_URL, REDIS_URL, REDIS_MASTER_NAME,
PUBLISH_INTERVAL. An upper-case name here that pubtasks does not read is warned of at
start; start a name of your own with _.
"""

import os

from celery.schedules import crontab  # noqa: F401 - for crontab entries, see below

from pubtasks.schedule import every

# -- The schedule -------------------------------------------------------------------
# Each entry fires the task "pubtasks.publish". `every()` is every PUBLISH_INTERVAL
# seconds, on the wall-clock grid (tick k at k * interval: no drift). The entry's
# name labels its statistics in Redis and is part of each message_id. Its "kwargs"
# say what it publishes and where (see docs/schedule.md): exchange, routing_key,
# body or payload, serializer, headers, properties.
# Without kwargs an entry publishes the example's message.
beat_schedule = {
    "publish-text": {
        "task": "pubtasks.publish",
        "schedule": every(),
    },
    # A body of its own, with a routing key of its own, every 5 s (BINDING_KEY below
    # must match the key, or RabbitMQ returns the messages: see ON_RETURN):
    # "publish-audit": {
    #     "task": "pubtasks.publish",
    #     "schedule": every(5.0),
    #     "kwargs": {
    #         "routing_key": "example.audit",
    #         "body": {"audit": True},
    #         "headers": {"source": "pubtasks"},
    #         "properties": {"priority": 5, "expiration": 60000},  # TTL in milliseconds
    #     },
    # },
    # A payload function's result, at 03:00 every day (in Celery's `timezone`, UTC unless
    # set; exact across the DST changes); if the workers were down at 03:00, once when
    # they are back, up to 6 hours late:
    # "publish-nightly": {
    #     "task": "pubtasks.publish",
    #     "schedule": crontab(minute=0, hour=3),
    #     "options": {"catch_up": "latest", "catch_up_within": 6 * 3600},
    #     "kwargs": {"payload": "pubtasks.payloads:load_average"},
    # },
}
# Ticks missed while no beat ran (a restart, a takeover, a Redis outage), per entry in
# its "options": "catch_up": "all" (the default: each missed tick fires, with its own
# time), "latest" (the most recent one only) or "none" (skip to the next tick), for
# ticks less than "catch_up_within" seconds old (default 60).
# At run time: pubtasks schedule list | pause ENTRY | resume ENTRY | trigger ENTRY.
# timezone = "Europe/Berlin"  # the zone of crontab entries (every() is on the UTC grid)

# -- The topology (the pika example's names) -----------------------------------------
# The shorthand for one exchange and one queue. For more, give kombu objects instead,
# as Celery's task_queues are written, and remove EXCHANGE_TYPE, QUEUE, BINDING_KEY and
# QUEUE_TYPE (a quorum queue then says so: queue_arguments={"x-queue-type": "quorum"}):
# from kombu import Exchange, Queue
# QUEUES = [Queue("text", Exchange("message", "topic"), routing_key="example.#")]
# EXCHANGES = [Exchange("heartbeat", "fanout")]  # exchanges that have no queue of ours
EXCHANGE = "message"  # where an entry publishes unless it names another exchange
EXCHANGE_TYPE = "topic"
QUEUE = "text"
ROUTING_KEY = "example.text"  # the routing key of an entry that names none
BINDING_KEY = "example.text"  # e.g. "example.#" to bind every routing key above
# "quorum" on a RabbitMQ cluster: the queue is replicated, and a confirm means that a
# majority of the nodes has the message. "classic" lives on one node. (Read from the
# environment here so that docker-compose.cluster.yml can say quorum.)
QUEUE_TYPE = os.environ.get("QUEUE_TYPE", "classic")

# -- Statistics and publishing ------------------------------------------------------
STATS_PREFIX = "pubtasks:"
CONFIRM_TIMEOUT = 5.0  # seconds to wait for basic.ack / basic.nack (and any reply)
PUBLISH_ATTEMPTS = 5  # basic.publish attempts per message before it counts as failed
PUBLISH_BATCH = 1  # messages per tick
CONFIRM_WINDOW = 4096  # publishes that may await their confirm at once
BATCH_WRITES = True  # write a tick's frames in batches; False: py-amqp's basic_publish
TICK_DEADLINE = 600.0  # seconds after its scheduled time that a tick may still be published
# A message RabbitMQ returns (no queue is bound for its routing key): "retry" publishes it
# again, backing off up to 2 s, until TICK_DEADLINE; "count" counts it returned and moves
# on. An entry's kwargs may say "on_return" for itself.
ON_RETURN = "retry"
# With a sentinel:// REDIS_URL, each counter write waits for this many replicas (Redis
# WAIT, at most 0.5 s), so that a failover cannot lose it; None: 1 with Sentinel, else 0.
REDIS_WAIT_REPLICAS = None
STARTUP_RETRIES = 20  # connection attempts per service at worker start before exiting
