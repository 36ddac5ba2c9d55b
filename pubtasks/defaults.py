"""Package defaults: the pika example's names, and the knobs' starting values."""

from __future__ import annotations

from typing import Final

AMQP_URL: Final = "amqp://guest:guest@localhost:5672//"
REDIS_URL: Final = "redis://localhost:6379/0"
#: The master's name that Sentinel knows, when REDIS_URL is a sentinel:// URL.
REDIS_MASTER_NAME: Final = "mymaster"
PUBLISH_INTERVAL: Final = 1.0

EXCHANGE: Final = "message"
EXCHANGE_TYPE: Final = "topic"
QUEUE: Final = "text"
ROUTING_KEY: Final = "example.text"
#: The shorthand queue's type: "classic", or "quorum" (replicated on a cluster).
QUEUE_TYPE: Final = "classic"
QUEUE_TYPES: Final = ("classic", "quorum")
#: What a message RabbitMQ returned (basic.return, unroutable) does: "retry" publishes
#: it again, backing off, until TICK_DEADLINE, then fails it; "count" counts it
#: returned and moves on. An entry's ``on_return`` overrides this.
ON_RETURN: Final = "retry"
ON_RETURN_CHOICES: Final = ("retry", "count")
#: DECLARE: "all" declares the topology; "passive" checks that its exchanges and queues
#: exist (a user without configure permission); "none" declares nothing.
DECLARE: Final = "all"
DECLARE_CHOICES: Final = ("all", "passive", "none")

STATS_PREFIX: Final = "pubtasks:"
#: Seconds to wait for any answer from RabbitMQ: a confirm (basic.ack/basic.nack), or the
#: reply to a declaration or a close. A publish unanswered this long counts unconfirmed.
CONFIRM_TIMEOUT: Final = 5.0
#: basic.publish attempts per tick (nacks, lost connections, confirm timeouts) before it fails.
PUBLISH_ATTEMPTS: Final = 5
#: Messages each tick publishes.
PUBLISH_BATCH: Final = 1
#: Publishes that may await their confirm at once on a channel (the pika example: 256).
#: A wide window lets RabbitMQ confirm each fsync of the queue in large groups.
CONFIRM_WINDOW: Final = 4096
#: Frame a tick's messages once and write them to the socket in batches (kombu's
#: ``Producer.batch()``); False sends each through py-amqp's own ``basic_publish``.
BATCH_WRITES: Final = True
#: Seconds after its scheduled time by which a tick must be confirmed, or it fails.
TICK_DEADLINE: Final = 600.0
#: Connection attempts, per service, at worker start before it exits non-zero.
STARTUP_RETRIES: Final = 20
#: An entry's ``catch_up_within`` unless its options say: a tick missed (beat stalled,
#: restarted, or taken over by another worker) may still fire, with its own time, up to
#: this many seconds late; a later one is skipped.
CATCH_UP_WITHIN: Final = 60.0

APP_ID: Final = "pubtasks"
TASK_NAME: Final = "pubtasks.publish"
#: The task that publishes a group of ticks due at the same instant (``beat``, ``group``).
GROUP_TASK_NAME: Final = "pubtasks.publish_group"
#: Ticks per group task message: a burst of N ticks due together is ceil(N / this) tasks.
GROUP_TICKS: Final = 250
DEFAULT_ENTRY: Final = "publish-text"
