"""The burst scenario (``pubtasks bench --entries N``): N entries ``every(P)``, all due
at the same instants, on the real worker with -B at its default concurrency.

What RabbitMQ received is the evidence: each message of the run's queue is taken as
it arrives, with the time it arrived, and matched to the grid points the schedule
made due, so a burst's lateness is when its last message reached RabbitMQ's queue
after its time, and delivered counts what the queue got, not what pubtasks counted
(which is compared with it). The same broker's raw confirmed throughput, one
pubtasks tick of N messages, is the limit the burst is set against.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kombu.entity import Queue

from pubtasks.bench.broker import Broker
from pubtasks.bench.fidelity import percentile
from pubtasks.bench.names import Names
from pubtasks.bench.services import delete_queues
from pubtasks.bench.throughput import pubtasks_tick
from pubtasks.bench.worker import Worker, rss_of_group, write_config
from pubtasks.ids import scheduled_at_of
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from pubtasks.tls import as_setting

CONFIG = """
from pubtasks.schedule import every

beat_schedule = {{
    f"e{{i:05d}}": {{"task": "pubtasks.publish", "schedule": every()}}
    for i in range({entries})
}}
EXCHANGE = {exchange!r}
QUEUE = {queue!r}
ROUTING_KEY = "bench.burst"
BINDING_KEY = "bench.#"
"""


class Arrivals:
    """A consumer of the run's queue in a thread: each message id, and when it arrived."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self.broker, self.queue = broker, queue
        self.at: dict[str, float] = {}
        self.received = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="arrivals")

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.basic_qos(0, 1000, False)

            def on_message(body: Any, message: Any) -> None:
                self.received += 1
                self.at.setdefault(str(message.properties.get("message_id")), time.time())
                message.ack()

            with conn.Consumer(
                Queue(self.queue, no_declare=True), callbacks=[on_message], channel=channel
            ):
                self._ready.set()
                idle = 0.0
                while not self._stop.is_set() or idle < 1.0:
                    try:
                        conn.drain_events(timeout=0.2)
                        idle = 0.0
                    except TimeoutError:
                        idle += 0.2

    def stop(self) -> None:
        """Stop once the queue has been idle for a second."""
        self._stop.set()
        self._thread.join(120)


def burst_run(
    settings: Settings, names: Names, entries: int, *, period: float, bursts: int, size: int
) -> dict[str, Any]:
    """``bursts`` bursts of ``entries`` ticks each, every ``period`` seconds."""
    broker = Broker.of(settings)
    queue = names.queue("burst")
    stats = Stats.of(settings, prefix=names.prefix)
    result: dict[str, Any] = {"entries": entries, "period": period, "bursts": bursts}
    with tempfile.TemporaryDirectory(prefix="pubtasks-bench-") as tmp:
        directory = Path(tmp)
        config = CONFIG.format(entries=entries, exchange=names.exchange, queue=queue)
        if settings.amqp_ssl is not None:
            config += f"AMQP_SSL = {as_setting(settings.amqp_ssl)!r}\n"
        write_config(directory, names.prefix, config)
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_URL_FILE")},
            "AMQP_URL": settings.amqp_url,
            "REDIS_URL": settings.redis_url,
            "PUBLISH_INTERVAL": str(period),
        }
        arrivals = Arrivals(broker, queue)
        try:
            spawned = time.time()
            with Worker(directory, env, name="bench-burst") as worker:
                assert worker.proc is not None
                worker.wait_ready(120)
                result["ready_s"] = round(time.time() - spawned, 2)
                arrivals.start()
                # The first burst: the next grid point a whole second from now.
                first = math.ceil((time.time() + 1.0) / period) * period
                points = [round(first + k * period, 3) for k in range(bursts)]
                end = points[-1] + period  # the last burst gets a whole period
                # Halfway to the next burst (a quiet moment), the commands an operator runs
                time.sleep(max(0.0, end - period / 2 - time.time()))
                for command, key in ((["stats"], "stats_s"), (["schedule", "list"], "list_s")):
                    result[key] = answer_time(command, directory, env)
                time.sleep(max(0.0, end - time.time()))  # the measured window itself
                result["rss_mib"] = round(rss_of_group(worker.proc.pid) / 2**20, 1)
                result["beat_start_s"] = beat_start(worker.log, spawned)
            arrivals.stop()
            counted = stats.snapshot().totals
        finally:
            stats.clear()
            stats.close()
            delete_queues(broker, [queue], exchange=names.exchange)
    result.update(judge(arrivals, points, entries))
    result["counted_acked"] = counted.acked
    result["received"] = len(arrivals.at)
    result["counters_equal_received"] = counted.acked == len(arrivals.at)
    raw, _ = pubtasks_tick(settings, names, entries, size)
    # The slowest burst's rate: its ticks that reached the queue, over when its last did.
    rates = [
        n / last
        for n, last in zip(result["delivered_per_burst"], result["last_lateness_s"], strict=True)
        if n and last
    ]
    result["raw_confirmed_msgs_per_s"] = round(raw)
    result["burst_msgs_per_s"] = round(min(rates)) if rates else None
    if result["burst_msgs_per_s"]:
        result["limit_vs_burst"] = round(raw / result["burst_msgs_per_s"], 1)
    return result


def beat_start(log: str, spawned: float) -> float | None:
    """Seconds from the worker's start to its beat going on with its entries (its
    ``going on with N entries`` line), by the log's clock (local time, to the ms)."""
    for line in log.splitlines():
        if "beat: going on with" in line and line.startswith("["):
            stamp = line[1:24]  # "2026-12-03 20:36:25,197"
            moment = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
            return round(moment + int(stamp[20:23]) / 1000 - spawned, 2)
    return None


def answer_time(command: list[str], directory: Path, env: dict[str, str]) -> float:
    """Seconds ``pubtasks COMMAND`` takes to answer, run as a user would, in the run's
    directory (its celeryconfig.py); the command must succeed."""
    started = time.monotonic()
    subprocess.run(
        [str(Path(sys.executable).with_name("pubtasks")), *command],
        cwd=directory,
        env={**env, "PYTHONPATH": str(directory)},
        capture_output=True,
        check=True,
        timeout=120,
    )
    return round(time.monotonic() - started, 2)


def judge(arrivals: Arrivals, points: list[float], entries: int) -> dict[str, Any]:
    """Per burst: how many of its ticks reached the queue, and when the last did."""
    by_point: dict[float, list[float]] = {p: [] for p in points}
    for message_id, at in arrivals.at.items():
        point = round(scheduled_at_of(message_id), 3)
        if point in by_point:  # the points are whole milliseconds (``first``)
            by_point[point].append(at - point)
    late = [x for lateness in by_point.values() for x in lateness]
    return {
        "expected": entries * len(points),
        "delivered": len(late),
        "delivered_per_burst": [len(by_point[p]) for p in points],
        "last_lateness_s": [round(max(v), 3) if v else None for v in by_point.values()],
        "p50_s": round(statistics.median(late), 3) if late else None,
        "p99_s": round(percentile(late, 0.99), 3) if late else None,
    }
