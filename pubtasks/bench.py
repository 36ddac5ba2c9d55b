"""``pubtasks bench``: confirmed-publish throughput, tick fidelity, recovery and memory.

Everything runs side by side, in one run, against the same broker:

a. throughput of N persistent messages, each to a fresh durable queue: the pika
   example's pattern (``SelectConnection``, ``confirm_delivery``, at most 256
   unconfirmed), kombu's ``confirm_publish`` (one confirm per publish), and the
   pubtasks batch path (one tick of N messages through the confirm window);
b. tick fidelity: the real ``celery -A pubtasks worker -B`` at a short interval,
   with a Celery ``timedelta`` entry beside the grid entry for comparison;
c. recovery: a broker restart (``rabbitmqctl stop_app``/``start_app``) while that
   worker runs, timed from the broker accepting connections to the next confirm;
d. memory: the resident memory of all the worker's processes at the end of (b).

Each part uses entities and Redis keys of its own (``pubtasks-bench-<id>``) and
deletes them afterwards.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from pubtasks import defaults
from pubtasks.errors import PubtasksError
from pubtasks.message import Tick, scheduled_at_of
from pubtasks.publisher import Publisher
from pubtasks.settings import Settings, mask_url
from pubtasks.stats import Stats
from pubtasks.waiting import wait_for

PIKA_WINDOW = 256


@dataclass
class Names:
    """The entities and keys one bench run owns."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def exchange(self) -> str:
        return f"pubtasks-bench-{self.run}"

    def queue(self, part: str) -> str:
        return f"pubtasks-bench-{self.run}-{part}"

    @property
    def prefix(self) -> str:
        return f"pubtasks-bench:{self.run}:"


def payload(size: int) -> bytes:
    return b"x" * size


# -- a. throughput ----------------------------------------------------------------------


def declare_queue(url: str, names: Names, part: str) -> None:
    with Connection(url) as conn:
        exchange = Exchange(names.exchange, "topic", durable=True)
        Queue(names.queue(part), exchange, f"bench.{part}", durable=True)(
            conn.default_channel
        ).declare()


def pika_baseline(url: str, names: Names, count: int, size: int) -> float:
    """The pika example's pattern: SelectConnection, confirms, at most 256 unconfirmed."""
    try:
        import pika
    except ImportError:
        raise PubtasksError("the pika baseline needs pika: pip install 'pubtasks[bench]'") from None

    declare_queue(url, names, "pika")
    body = payload(size)
    props = pika.BasicProperties(
        app_id="example-publisher", content_type="text/plain", delivery_mode=2
    )
    sent, confirmed = 0, 0
    started = ended = 0.0
    outstanding: list[int] = []
    connection: Any = None
    channel: Any = None

    def publish_more() -> None:
        nonlocal sent
        while sent < count and len(outstanding) < PIKA_WINDOW:
            channel.basic_publish(names.exchange, "bench.pika", body, props)
            sent += 1
            outstanding.append(sent)

    def on_confirm(frame: Any) -> None:
        nonlocal confirmed, ended
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        done = [t for t in outstanding if t <= tag] if multiple else [tag]
        for t in done:
            outstanding.remove(t)
        confirmed += len(done)
        if confirmed >= count:
            ended = time.perf_counter()
            connection.close()
        else:
            publish_more()

    def on_channel(ch: Any) -> None:
        nonlocal channel, started
        channel = ch
        ch.confirm_delivery(on_confirm)
        started = time.perf_counter()
        publish_more()

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    failure: list[BaseException] = []

    def on_open_error(conn: Any, error: BaseException) -> None:
        failure.append(error)
        conn.ioloop.stop()

    info = Connection(url)  # parse the URL as kombu does: "//" is the vhost "/"
    parameters = pika.ConnectionParameters(
        host=info.hostname or "localhost",
        port=info.port or 5672,
        virtual_host=info.virtual_host or "/",
        credentials=pika.PlainCredentials(info.userid or "guest", info.password or "guest"),
    )
    connection = pika.SelectConnection(
        parameters,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda conn, reason: conn.ioloop.stop(),
    )
    connection.ioloop.start()
    if failure or not ended:
        raise PubtasksError(f"the pika baseline did not finish: {failure or 'closed early'}")
    return count / (ended - started)


def kombu_confirm(url: str, names: Names, count: int, size: int) -> float:
    """kombu's own confirm_publish: each publish waits for its confirm."""
    declare_queue(url, names, "kombu")
    body = payload(size)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), exchange=Exchange(names.exchange, "topic"))
        start = time.perf_counter()
        for _ in range(count):
            producer.publish(body, routing_key="bench.kombu", delivery_mode=2)
        return count / (time.perf_counter() - start)


def pubtasks_batch(
    settings: Settings, names: Names, count: int, size: int
) -> tuple[float, dict[str, Any]]:
    """One tick of ``count`` messages through the pubtasks batch path, counted in Redis."""
    s = replace(
        settings,
        exchange=names.exchange,
        queue=names.queue("pubtasks"),
        routing_key="bench.pubtasks",
        binding_key="bench.pubtasks",
        stats_prefix=names.prefix,
        publish_attempts=1,
    )
    stats = Stats.from_url(s.redis_url, s.stats_prefix)
    publisher = Publisher(s, stats)
    try:
        publisher.connect()
        # The JSON body with its number and times, padded with "text" to `size` bytes.
        # The default entry's name, so the ids are as long as a user's by default.
        probe = Tick(defaults.DEFAULT_ENTRY, time.time(), s.routing_key, 1, count, text="")
        from pubtasks.message import body

        overhead = len(body(probe, probe.messages()[0], time.time()))
        tick = replace(
            probe, number=stats.next_number(count), text="x" * max(size - overhead - 6, 0)
        )
        start = time.perf_counter()
        publisher.publish_tick(tick)
        rate = count / (time.perf_counter() - start)
        snap = stats.snapshot().totals
        return rate, {
            "published": snap.published,
            "acked": snap.acked,
            "invariant_holds": snap.invariant_holds,
        }
    finally:
        publisher.close()
        stats.clear()
        stats.client.close()


# -- b, c, d: the real worker ----------------------------------------------------------------


WORKER_CONFIG = """
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
STATS_PREFIX = {prefix!r}
task_default_queue = {prefix!r} + "celery"
broker_transport_options = {{
    "visibility_timeout": 3600,
    "unacked_key": {prefix!r} + "unacked",
    "unacked_index_key": {prefix!r} + "unacked_index",
    "unacked_mutex_key": {prefix!r} + "unacked_mutex",
}}
worker_concurrency = 2
# No remote control: its pidbox binding would stay behind in Redis's shared
# _kombu.binding_deadlines after the run; the bench does not use it.
worker_enable_remote_control = False
"""


def rss_of_group(pgid: int) -> int:
    """Bytes of resident memory of every process in process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


SUCCEEDED = re.compile(r"Task pubtasks\.publish\[[^]]+\] succeeded in [0-9.e-]+s: (\{.*\})$")


def confirmed_ticks(log: str) -> list[dict[str, Any]]:
    """The result of every publish task the worker logged as succeeded."""
    return [ast.literal_eval(m[1]) for m in map(SUCCEEDED.search, log.splitlines()) if m]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def grid_fidelity(
    scheduled: list[float], interval: float, spawned: float, stopped: float
) -> dict[str, Any]:
    """Expected against delivered ticks, and drift from t0 + k * interval.

    Expected: one tick per grid point from the first tick to ``stopped``. Extra at
    startup: ticks for grid points before the worker was started (a catch-up burst),
    and any grid point fired twice.
    """
    times = sorted(scheduled)
    if not times:
        return {"expected": 0, "delivered": 0, "missed": 0, "extra_at_startup": 0}
    t0 = times[0]
    ks = [round((t - t0) / interval) for t in times]
    drift = [abs(t - (t0 + k * interval)) for t, k in zip(times, ks, strict=True)]
    expected = math.floor((stopped - t0) / interval + 1e-9) + 1
    return {
        "expected": expected,
        "delivered": len(times),
        "missed": expected - len(set(ks)),
        "max_drift_ms": round(max(drift) * 1000, 3),
        "extra_at_startup": sum(1 for t in times if t < spawned) + len(ks) - len(set(ks)),
    }


def timedelta_drift(scheduled: list[float], interval: float) -> dict[str, Any]:
    """How far Celery's timedelta ticks fall behind t0 + k * interval, per tick."""
    times = sorted(scheduled)
    if len(times) < 2:
        return {}
    behind = [t - (times[0] + k * interval) for k, t in enumerate(times)]
    return {
        "ticks": len(times),
        "drift_ms_total": round(behind[-1] * 1000, 3),
        "drift_ms_per_tick": round(behind[-1] * 1000 / (len(times) - 1), 4),
    }


@contextmanager
def running_worker(env: dict[str, str], directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (directory / "worker.log").open("wb")
    celery = str(Path(sys.executable).with_name("celery"))
    name = f"bench-{os.getpid()}@%h"
    proc = subprocess.Popen(
        [
            celery,
            "-A",
            "pubtasks",
            "worker",
            "-B",
            "-l",
            "info",
            "-n",
            name,
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def broker_port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def worker_run(
    settings: Settings, names: Names, interval: float, seconds: float, restart: bool
) -> dict[str, Any]:
    """Parts b, c and d: one run of the real worker."""
    stats = Stats.from_url(settings.redis_url, names.prefix)
    queue = names.queue("ticks")
    result: dict[str, Any] = {"interval": interval, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="pubtasks-bench-") as tmp:
        directory = Path(tmp)
        (directory / "celeryconfig.py").write_text(
            textwrap.dedent(
                WORKER_CONFIG.format(
                    interval=interval, exchange=names.exchange, queue=queue, prefix=names.prefix
                )
            )
        )
        env = {
            **os.environ,
            "AMQP_URL": settings.amqp_url,
            "REDIS_URL": settings.redis_url,
            "PUBLISH_INTERVAL": str(interval),
        }
        spawned = time.time()
        try:
            with running_worker(env, directory) as proc:
                log_path = directory / "worker.log"

                def ready() -> bool:
                    if proc.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        raise PubtasksError(f"bench: the worker exited:\n{tail}")
                    return " ready." in log_path.read_text(errors="replace")

                wait_for(ready, 60, "the worker to be ready")
                time.sleep(seconds)  # the measured window itself, not a wait for a condition
                stopped = time.time()
                result["rss_mib"] = round(rss_of_group(proc.pid) / 2**20, 1)
                if restart:
                    result["recovery_s"] = broker_restart_recovery(settings, stats)
            log = (directory / "worker.log").read_text(errors="replace")
        finally:
            stats.clear()
            stats.client.close()
    ticks = confirmed_ticks(log)
    window = [t for t in ticks if scheduled_at_of(t["message_id"]) <= stopped]
    grid = [t for t in window if t["message_id"].startswith("grid@")]
    latencies = [t["confirmed_at"] - scheduled_at_of(t["message_id"]) for t in grid]
    result["grid"] = grid_fidelity(
        [scheduled_at_of(t["message_id"]) for t in grid], interval, spawned, stopped
    )
    if latencies:
        result["grid"]["latency_p50_ms"] = round(statistics.median(latencies) * 1000, 2)
        result["grid"]["latency_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 2)
    result["celery_timedelta"] = timedelta_drift(
        [
            scheduled_at_of(t["message_id"])
            for t in window
            if t["message_id"].startswith("celery-timedelta@")
        ],
        interval,
    )
    purge_and_delete(settings.amqp_url, names, [queue])
    return result


def broker_restart_recovery(settings: Settings, stats: Stats) -> float:
    """Stop and start RabbitMQ's app; seconds from it accepting again to the next confirm."""
    host, port = Connection(settings.amqp_url).hostname, Connection(settings.amqp_url).port
    try:
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"bench: cannot restart RabbitMQ with rabbitmqctl: {exc}") from exc
    try:
        time.sleep(2)  # the outage itself
    finally:
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True)
    wait_for(lambda: broker_port_open(host or "127.0.0.1", port or 5672), 120, "RabbitMQ")
    up = time.time()
    before = stats.snapshot().totals.acked
    wait_for(lambda: stats.snapshot().totals.acked > before, 60, "a confirm", 0.005)
    return round(time.time() - up, 3)


def forget_celery_keys(url: str, prefix: str) -> None:
    """Delete the worker run's Celery transport keys, all named after the bench prefix."""
    client = Stats.from_url(url, prefix).client
    try:
        keys = list(client.scan_iter(match=f"_kombu.binding*.{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        ours = [m for m, _ in client.zscan_iter("_kombu.binding_deadlines") if prefix in m]
        if ours:
            client.zrem("_kombu.binding_deadlines", *ours)
    finally:
        client.close()


def purge_and_delete(url: str, names: Names, queues: list[str]) -> None:
    with Connection(url) as conn:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pubtasks.app import app

    settings = Settings.load(os.environ, app.conf)  # celeryconfig's CONFIRM_WINDOW too
    names = Names()
    report: dict[str, Any] = {
        "broker": mask_url(settings.amqp_url),
        "messages": args.messages,
        "size": args.size,
        "confirm_window": settings.confirm_window,
    }
    queues = [names.queue(p) for p in ("pika", "kombu", "pubtasks")]
    every_queue = [*queues, names.queue("ticks")]
    try:
        # pika and pubtasks take turns, each on a fresh queue, `rounds` times: on a
        # shared 2-core machine one run of either varies by 10-20 %; the medians do not.
        pika_rates, pubtasks_rates, counts = [], [], []
        for _ in range(args.rounds):
            pika_rates.append(pika_baseline(settings.amqp_url, names, args.messages, args.size))
            rate, counted = pubtasks_batch(settings, names, args.messages, args.size)
            pubtasks_rates.append(rate)
            counts.append(counted)
            purge_and_delete(settings.amqp_url, names, queues)
        # Redis counted every message of every round exactly (the last round shown).
        report["pubtasks_batch_counted"] = counts[-1]
        report["pubtasks_batch_exact_every_round"] = all(
            c["invariant_holds"] and c["published"] == c["acked"] == args.messages for c in counts
        )
        report["pika_msgs_per_s"] = round(statistics.median(pika_rates))
        report["pubtasks_batch_msgs_per_s"] = round(statistics.median(pubtasks_rates))
        report["rounds"] = {
            "pika": [round(r) for r in pika_rates],
            "pubtasks_batch": [round(r) for r in pubtasks_rates],
        }
        report["pubtasks_vs_pika"] = round(
            report["pubtasks_batch_msgs_per_s"] / report["pika_msgs_per_s"], 2
        )
        report["kombu_confirm_msgs_per_s"] = round(
            kombu_confirm(settings.amqp_url, names, args.messages, args.size)
        )
        if args.tick_seconds > 0:
            report["ticks"] = worker_run(
                settings, names, args.interval, args.tick_seconds, restart=not args.no_restart
            )
    finally:
        purge_and_delete(settings.amqp_url, names, every_queue)
        with Connection(settings.amqp_url) as conn:
            conn.channel().exchange_delete(names.exchange)
        forget_celery_keys(settings.redis_url, names.prefix)
    return report


def render(report: dict[str, Any]) -> str:
    """The report as a Markdown table (also what docs/performance.md holds)."""
    rounds = report.get("rounds", {})
    lines = [
        f"Confirmed publishes, {report['messages']} persistent messages of {report['size']} "
        f"bytes each, {report['broker']}; pika and pubtasks in turn, "
        f"{len(rounds.get('pika', [1]))} times each, medians:",
        "",
        "| way | msg/s |",
        "|---|---:|",
        f"| pika `SelectConnection`, confirms, at most {PIKA_WINDOW} unconfirmed "
        f"(the example's pattern) | {report['pika_msgs_per_s']} |",
        f"| kombu `confirm_publish`, one confirm per publish | "
        f"{report['kombu_confirm_msgs_per_s']} |",
        f"| pubtasks batch path (`PUBLISH_BATCH`, confirm window "
        f"{report['confirm_window']}, counted in Redis) | {report['pubtasks_batch_msgs_per_s']} |",
        "",
        f"pubtasks / pika: **{report['pubtasks_vs_pika']}x** (target: at least 1.0x, "
        f"{'met' if report['pubtasks_vs_pika'] >= 1.0 else 'not met'}); every run, msg/s: "
        f"pika {rounds.get('pika')}, pubtasks {rounds.get('pubtasks_batch')}",
    ]
    ticks = report.get("ticks")
    if ticks:
        g, td = ticks["grid"], ticks["celery_timedelta"]
        lines += [
            "",
            f"Ticks: the real worker with beat, `PUBLISH_INTERVAL={ticks['interval']}`, "
            f"for {ticks['seconds']:g} s:",
            "",
            "| measure | value | target |",
            "|---|---:|---|",
            f"| ticks expected / delivered | {g['expected']} / {g['delivered']} | equal |",
            f"| ticks missed between the first and the last | {g['missed']} | 0 |",
            f"| latency, scheduled tick to confirm, p50 | {g.get('latency_p50_ms')} ms | |",
            f"| latency, scheduled tick to confirm, p99 | {g.get('latency_p99_ms')} ms "
            "| <= 20 ms |",
            f"| largest distance of tick k from t0 + k x interval | {g['max_drift_ms']} ms "
            "| <= 5 ms |",
            f"| extra ticks at startup | {g['extra_at_startup']} | 0 |",
            f"| Celery `timedelta` entry beside it: drift | {td.get('drift_ms_total')} ms "
            f"over {td.get('ticks')} ticks ({td.get('drift_ms_per_tick')} ms per tick) | |",
            f"| RSS of all the worker's processes at the end | {ticks['rss_mib']} MiB | |",
        ]
        if "recovery_s" in ticks:
            lines.append(
                f"| broker restart: accepting connections to the next confirm "
                f"| {ticks['recovery_s']} s | <= 2 s |"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--markdown", action="store_true", help="print docs/performance.md")
    parser.add_argument("--messages", type=int, default=20000, help="messages for part a")
    parser.add_argument("--size", type=int, default=200, help="bytes per message")
    parser.add_argument(
        "--rounds", type=int, default=5, help="pika and pubtasks runs, in turn (medians shown)"
    )
    parser.add_argument("--interval", type=float, default=0.1, help="PUBLISH_INTERVAL for b")
    parser.add_argument(
        "--tick-seconds", type=float, default=60.0, help="length of part b; 0 skips b, c, d"
    )
    parser.add_argument("--no-restart", action="store_true", help="skip part c (needs rabbitmqctl)")


def command(args: argparse.Namespace) -> int:
    report = run(args)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    elif args.markdown:
        argv = " ".join(sys.argv[1:])
        print("# Performance\n")
        print(f"Produced by `pubtasks {argv}` (`scripts/performance`); do not edit by hand.\n")
        print(render(report))
        print("\n<details><summary>JSON</summary>\n\n```json")
        print(json.dumps(report, indent=2, sort_keys=True))
        print("```\n</details>")
    else:
        print(render(report))
    return 0
