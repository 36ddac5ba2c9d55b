"""The bench's errands on RabbitMQ and Redis: clearing up a run, and the opt-in broker restart.

Nothing here restarts a broker unless ``pubtasks bench --restart-broker`` asked
for it: ``broker_restart_recovery`` stops the local node's app with
``rabbitmqctl``, which would cut every other client of a shared RabbitMQ too.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable

from kombu.connection import Connection

from pubtasks.bench.broker import Broker
from pubtasks.bench.waiting import wait_for
from pubtasks.stats import Stats


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl -q ARGS`` on the local node; return what it printed."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=timeout
    )
    return out.stdout


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def broker_restart_recovery(amqp_url: str, stats: Stats) -> float:
    """Stop and start the local RabbitMQ's app; seconds from it accepting again to the
    next confirm counted in ``stats``."""
    info = Connection(amqp_url)
    host, port = info.hostname or "127.0.0.1", info.port or 5672
    try:
        rabbitmqctl("stop_app")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"bench: cannot restart RabbitMQ with rabbitmqctl: {exc}") from exc
    try:
        time.sleep(2)  # the outage itself
    finally:
        rabbitmqctl("start_app")
    wait_for(lambda: port_open(host, port), 120, "RabbitMQ")
    up = time.time()
    before = stats.snapshot().totals.acked
    wait_for(lambda: stats.snapshot().totals.acked > before, 60, "a confirm", 0.005)
    return round(time.time() - up, 3)


def delete_queues(broker: Broker, queues: Iterable[str], exchange: str | None = None) -> None:
    """Delete ``queues`` (and ``exchange``), with whatever they hold."""
    with broker.connection() as conn:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)
        if exchange is not None:
            channel.exchange_delete(exchange)


def forget_celery_keys(redis_url: str, prefix: str) -> None:
    """Delete a worker's Celery transport keys, all named after ``prefix``."""
    stats = Stats.from_url(redis_url, prefix)
    client = stats.client
    try:
        keys = list(client.scan_iter(match=f"_kombu.binding*.{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        ours = [m for m, _ in client.zscan_iter("_kombu.binding_deadlines") if prefix in m]
        if ours:
            client.zrem("_kombu.binding_deadlines", *ours)
    finally:
        stats.close()
