"""pubtasks configuration: the schedule, the topology, and the publish knobs.

The worker reads this module when it starts (``celery -A pubtasks worker -B``
from this directory). Environment variables stay the way to set the
connections and the interval: AMQP_URL, REDIS_URL, PUBLISH_INTERVAL
(and CELERY_BROKER_URL to move Celery's own transport off Redis).
"""

from celery.schedules import crontab  # noqa: F401 - for crontab entries, see below

from pubtasks.schedule import every

# -- The schedule -------------------------------------------------------------------
# Each entry fires the task "pubtasks.publish". `every()` is every PUBLISH_INTERVAL
# seconds, on the wall-clock grid (tick k at k * interval: no drift). The optional
# kwarg "routing_key" overrides ROUTING_KEY for that entry; the entry's name labels
# its statistics in Redis and is part of each message_id.
beat_schedule = {
    "publish-text": {
        "task": "pubtasks.publish",
        "schedule": every(),
    },
    # Another routing key every 5 s (BINDING_KEY below must match it, or the
    # messages come back from RabbitMQ and count as `returned`):
    # "publish-audit": {
    #     "task": "pubtasks.publish",
    #     "schedule": every(5.0),
    #     "kwargs": {"routing_key": "example.audit"},
    # },
    # A crontab entry, at 03:00 UTC every day:
    # "publish-nightly": {
    #     "task": "pubtasks.publish",
    #     "schedule": crontab(minute=0, hour=3),
    # },
}

# -- The topology (the pika example's names) -----------------------------------------
EXCHANGE = "message"
EXCHANGE_TYPE = "topic"
QUEUE = "text"
ROUTING_KEY = "example.text"
BINDING_KEY = "example.text"  # e.g. "example.#" to bind every routing key above

# -- Statistics and publishing ------------------------------------------------------
STATS_PREFIX = "pubtasks:"
CONFIRM_TIMEOUT = 5.0  # seconds to wait for basic.ack / basic.nack (and any reply)
PUBLISH_ATTEMPTS = 5  # basic.publish attempts per message before it counts as failed
PUBLISH_BATCH = 1  # messages per tick
CONFIRM_WINDOW = 4096  # publishes that may await their confirm at once
BATCH_WRITES = True  # write a tick's frames in batches; False: py-amqp's basic_publish
TICK_DEADLINE = 600.0  # seconds after its scheduled time that a tick may still be published
STARTUP_RETRIES = 20  # connection attempts per service at worker start before exiting
