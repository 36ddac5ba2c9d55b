"""Parts b, c and d: the real worker at a short interval, judged by what RabbitMQ's queue
received (a consumer beside the run) and by its memory."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pubtasks.bench.broker import Broker
from pubtasks.bench.burst import Arrivals
from pubtasks.bench.fidelity import grid_fidelity, percentile, timedelta_drift
from pubtasks.bench.names import Names
from pubtasks.bench.services import broker_restart_recovery, delete_queues
from pubtasks.bench.worker import Worker, rss_of_group, write_config
from pubtasks.ids import scheduled_at_of
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from pubtasks.tls import as_setting

CONFIG = """
from datetime import timedelta
from pubtasks.schedule import every

beat_schedule = {{
    "grid": {{"task": "pubtasks.publish", "schedule": every()}},
    # Celery's own interval schedule, for comparison: "interval after the last run".
    "celery-timedelta": {{
        "task": "pubtasks.publish",
        "schedule": timedelta(seconds={interval!r}),
        "kwargs": {{"routing_key": "bench.timedelta"}},
    }},
}}
EXCHANGE = {exchange!r}
QUEUE = {queue!r}
ROUTING_KEY = "bench.grid"
BINDING_KEY = "bench.#"
worker_concurrency = 2
"""


def worker_run(
    settings: Settings, names: Names, interval: float, seconds: float, restart: bool
) -> dict[str, Any]:
    """One run of the real worker: tick fidelity, memory and, with ``restart``, recovery."""
    stats = Stats.of(settings, prefix=names.prefix)
    queue = names.queue("ticks")
    result: dict[str, Any] = {"interval": interval, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="pubtasks-bench-") as tmp:
        directory = Path(tmp)
        config = CONFIG.format(interval=interval, exchange=names.exchange, queue=queue)
        if settings.amqp_ssl is not None:  # the worker connects as the bench does
            config += f"AMQP_SSL = {as_setting(settings.amqp_ssl)!r}\n"
        write_config(directory, names.prefix, config)
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_URL_FILE")},
            "AMQP_URL": settings.amqp_url,
            "REDIS_URL": settings.redis_url,
            "PUBLISH_INTERVAL": str(interval),
        }
        spawned = time.time()
        arrivals = Arrivals(Broker.of(settings), queue)
        try:
            with Worker(directory, env, name="bench") as worker:
                assert worker.proc is not None
                worker.wait_ready(60)
                arrivals.start()
                watched = time.time()  # ticks due from here on are timed as they arrive
                time.sleep(seconds)  # the measured window itself, not a wait for a condition
                stopped = time.time()
                result["rss_mib"] = round(rss_of_group(worker.proc.pid) / 2**20, 1)
                if restart:
                    result["recovery_s"] = broker_restart_recovery(settings.amqp_url, stats)
            arrivals.stop()
        finally:
            stats.clear()
            stats.close()
            delete_queues(Broker.of(settings), [queue])
    # What RabbitMQ's queue received, whether each tick went alone or in a group
    ticks = {m: at for m, at in arrivals.at.items() if scheduled_at_of(m) <= stopped}
    grid = {m: at for m, at in ticks.items() if m.startswith("grid@")}
    latencies = [at - scheduled_at_of(m) for m, at in grid.items() if scheduled_at_of(m) > watched]
    result["grid"] = grid_fidelity([scheduled_at_of(m) for m in grid], interval, spawned, stopped)
    if latencies:
        result["grid"]["latency_p50_ms"] = round(statistics.median(latencies) * 1000, 2)
        result["grid"]["latency_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 2)
    result["celery_timedelta"] = timedelta_drift(
        [scheduled_at_of(m) for m in ticks if m.startswith("celery-timedelta@")], interval
    )
    return result
