"""The ``pubtasks`` command: ``stats [--json | --watch]``, ``schedule list | pause | resume |
trigger | add | edit | remove | show | export | apply | backfill``, ``metrics``, ``health``,
``bench``."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence

from prometheus_client.registry import CollectorRegistry

from pubtasks import acl, editing, exporter, inventory, listing
from pubtasks.celery import app
from pubtasks.control import Control
from pubtasks.entries import publish_entries
from pubtasks.errors import ConfigError, PubtasksError
from pubtasks.health import check, read_fleet, schedules
from pubtasks.keys import COUNTERS
from pubtasks.metrics import Schedule, StatsCollector
from pubtasks.records import Counts, Snapshot
from pubtasks.runtime import Schedules
from pubtasks.stats import Stats
from pubtasks.times import moment
from pubtasks.urls import mask_url, redis_db

COLUMNS = (*COUNTERS[:-1], "pending", "failed", "skipped")


def render_table(snap: Snapshot, where: str, prefix: str, now: float) -> str:
    """The human view of a snapshot: one row of counters per entry, then the details."""
    rows: list[tuple[str, Counts]] = [("TOTAL", snap.totals), *sorted(snap.entries.items())]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"pubtasks stats  ({where}, prefix {prefix!r})",
        "  ".join([f"{'entry':<{width}}", *(f"{c:>11}" for c in COLUMNS)]),
    ]
    for name, c in rows:
        lines.append("  ".join([f"{name:<{width}}", *(f"{getattr(c, k):>11}" for k in COLUMNS)]))
    t = snap.totals
    confirmed = (
        "-"
        if t.last_confirmed_number is None
        else f"#{t.last_confirmed_number} at {moment(t.last_confirmed_at, now)}"
    )
    error = (
        " ".join(f"{k}={v}" for k, v in sorted(snap.last_error.items())) if snap.last_error else "-"
    )
    verdict = "holds" if t.invariant_holds else "BROKEN"
    reasons = ", ".join(f"{reason} {n}" for reason, n in t.skipped_by().items())
    lines += [
        "",
        f"last message number  {snap.last_message_number}",
        f"last confirmed       {confirmed}",
        f"oldest pending       {moment(snap.oldest_pending_at, now)}",
        f"invariant            {verdict} (published = acked + nacked + unconfirmed + pending)",
        f"ticks skipped        {t.skipped} ({reasons})",
        f"last error           {error}",
    ]
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> tuple[Stats, str, str]:
    """The statistics the worker writes: REDIS_URL and STATS_PREFIX read as it reads them."""
    settings = app.settings
    prefix = getattr(args, "prefix", None) or settings.stats_prefix
    return Stats.of(settings, prefix=prefix), mask_url(settings.redis_url), prefix


class Rate:
    """Acked per second over the last minute, from samples of the ``acked`` counter."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, acked: int) -> float | None:
        self.samples.append((at, acked))
        while self.samples and at - self.samples[0][0] > self.window:
            self.samples.popleft()
        first_at, first = self.samples[0]
        return None if at <= first_at else (acked - first) / (at - first_at)


def stats_command(args: argparse.Namespace) -> int:
    stats, where, prefix = _stats(args)
    if not args.watch:
        snap = stats.snapshot()
        if args.json:
            print(json.dumps(snap.as_json(time.time()), sort_keys=True))
        else:
            print(render_table(snap, where, prefix, time.time()))
        return 0
    rate = Rate()
    shown = 0
    try:
        while args.count is None or shown < args.count:
            snap = stats.snapshot()
            now = time.time()
            per_second = rate.add(now, snap.totals.acked)
            text = render_table(snap, where, prefix, now)
            speed = "-" if per_second is None else f"{per_second:.2f}"
            print(f"\x1b[H\x1b[2J{text}\nacked per second    {speed} (last minute)", flush=True)
            shown += 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    return 0


def publish_entry(
    beat_schedule: Mapping[str, object], name: str, runtime: Collection[str] = ()
) -> str:
    """``name``, if it is a publish entry of ``beat_schedule`` or a run-time entry; else
    ``ConfigError``."""
    ours = [*publish_entries(beat_schedule), *runtime]
    if name not in ours:
        raise ConfigError(
            f"there is no publish entry {name!r} (entries: {', '.join(ours) or 'none'}); "
            "name one of them, as 'pubtasks schedule list' spells it"
        )
    return name


def schedule_command(args: argparse.Namespace) -> int:
    stats, where, prefix = _stats(args)
    if args.action in editing.ACTIONS:
        return editing.run(Schedules(app, stats), args)
    control = Control(stats)
    beat_schedule = app.conf.beat_schedule or {}
    now = time.time()
    found = inventory.take(stats, beat_schedule, app.timezone)
    runtime = found.runtime
    if args.action == "list":
        state = control.state(list(found.entries))
        rows = listing.rows(
            beat_schedule,
            app.settings.publish_interval,
            app.timezone,
            state=state,
            entries=stats.snapshot().entries,
            now=now,
            runtime=runtime,
            runs=found.runs,
        )
        if args.json:
            print(json.dumps(listing.as_json(rows, state), sort_keys=True))
        else:
            print(listing.render(rows, state, where, prefix, now))
        return 0
    name = publish_entry(beat_schedule, args.entry, runtime)
    holder = control.state([]).holder
    nobody = "" if holder else " (no beat holds the beat lock now: it applies when one starts)"
    if args.action == "pause":
        since = control.pause(name, now)
        if since is not None:
            print(f"{name} was already paused, {now - since:.1f} s ago")
        else:
            print(f"paused {name}: its ticks are skipped from the next one{nobody}")
    elif args.action == "resume":
        since = control.resume(name, now)
        if since is None:
            print(f"{name} was not paused")
        else:
            print(
                f"resumed {name} after {now - since:.1f} s paused: it goes on from its next "
                f"tick, without the ticks of the pause{nobody}"
            )
    else:
        trigger = control.trigger(name, now)
        print(f"triggered {name}: the beat holder fires tick {trigger.tick_id}{nobody}")
    return 0


def metrics_command(args: argparse.Namespace) -> int:
    stats, where, prefix = _stats(args)
    stats.ping()
    registry = CollectorRegistry()
    settings = app.settings
    schedule = Schedule(
        app.conf.beat_schedule or {},
        settings.publish_interval,
        settings.confirm_timeout,
        app.timezone,
    )
    registry.register(StatsCollector(stats, schedule))
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("metrics: give --tls-cert and --tls-key together (TLS), or neither")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise ConfigError("metrics: --tls-client-ca needs --tls-cert and --tls-key (TLS)")
    tls = None
    if args.tls_cert is not None:
        tls = exporter.Tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    auth = None if args.basic_auth_file is None else exporter.credentials(args.basic_auth_file)
    try:
        exporter.serve(registry, args.address, args.port, tls, auth)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"metrics: cannot serve on {args.address}:{args.port}: {exc}; check --address, "
            "--port and the TLS files"
        ) from None
    scheme = "https" if tls is not None else "http"
    print(
        f"pubtasks: serving {scheme}://{args.address}:{args.port}/metrics from {where} "
        f"(prefix {prefix!r})",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def redis_acl_command(args: argparse.Namespace) -> int:
    settings = app.settings
    rules = acl.rules(settings.stats_prefix, app.conf, redis_db(settings.redis_url))
    print(acl.setuser(args.user, rules))
    print(
        "# replace PASSWORD (or give #<sha256 of it> for >PASSWORD); with Sentinel, the "
        "Sentinels need their own user",
        file=sys.stderr,
    )
    return 0


def health_command(args: argparse.Namespace) -> int:
    stats, _, _ = _stats(args)
    snap = stats.snapshot()
    found = inventory.take(stats, app.conf.beat_schedule or {}, app.timezone)
    state = Control(stats).state(list(found.entries))
    fleet = read_fleet(stats, state.holder)
    interval = app.settings.publish_interval
    finished = {
        n for n, s in found.states(interval, app.timezone, state).items() if s == "finished"
    }
    expected = schedules(found.entries, interval, app.timezone, finished)
    healthy, lines = check(
        expected, snap.entries, time.time(), fleet, paused=state.paused, resumed=state.resumed
    )
    print(("healthy: " if healthy else "unhealthy: ") + "; ".join(lines))
    return 0 if healthy else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="pubtasks", description="pubtasks: confirmed, scheduled RabbitMQ publishing."
    )
    sub = top.add_subparsers(dest="command", required=True)
    stats = sub.add_parser(
        "stats", help="print the confirm statistics kept in Redis (reads REDIS_URL)"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument("--prefix", help="key prefix (default: STATS_PREFIX, else 'pubtasks:')")
    stats.add_argument(
        "--watch", action="store_true", help="refresh every second, with acked per second"
    )
    stats.add_argument("--count", type=int, help="with --watch: stop after this many screens")
    stats.set_defaults(run=stats_command)
    schedule = sub.add_parser(
        "schedule",
        help="list the schedule's entries, pause or resume one, or fire one extra tick now "
        "(reads REDIS_URL and celeryconfig.py)",
    )
    actions = schedule.add_subparsers(dest="action", required=True)
    listed = actions.add_parser(
        "list", help="every entry: schedule, next and last tick, paused or not, counters"
    )
    listed.add_argument("--json", action="store_true", help="print one JSON object")
    for action, text in (
        ("pause", "stop firing an entry's ticks until it is resumed (kept in Redis)"),
        ("resume", "fire an entry's ticks again, from its next tick on the schedule"),
        ("trigger", "fire one extra tick of an entry now (message_id <entry>@manual-<ms>)"),
    ):
        one = actions.add_parser(action, help=text)
        one.add_argument("entry", help="the entry's name in beat_schedule")
    editing.parsers(actions)
    for each in actions.choices.values():
        each.add_argument("--prefix", help="key prefix (default: STATS_PREFIX)")
    schedule.set_defaults(run=schedule_command)
    metrics = sub.add_parser(
        "metrics",
        help="serve the counters as Prometheus metrics on /metrics (reads REDIS_URL and "
        "celeryconfig.py)",
    )
    metrics.add_argument("--port", type=int, default=9808, help="port (default 9808)")
    metrics.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: all)",
    )
    metrics.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)"
    )
    metrics.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    metrics.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require a client certificate signed by this CA (mutual TLS)",
    )
    metrics.add_argument(
        "--basic-auth-file",
        metavar="FILE",
        help="require HTTP basic auth with the user:password this file holds",
    )
    metrics.add_argument("--prefix", help="key prefix (default: STATS_PREFIX)")
    metrics.set_defaults(run=metrics_command)
    health = sub.add_parser(
        "health",
        help="exit 0 when a worker and a beat are alive and every entry's due ticks were "
        "confirmed within the grace (reads REDIS_URL and celeryconfig.py)",
    )
    health.add_argument("--prefix", help="key prefix (default: STATS_PREFIX)")
    health.set_defaults(run=health_command)
    redis_acl = sub.add_parser(
        "redis-acl",
        help="print the smallest ACL SETUSER line that pubtasks and Celery's Redis transport "
        "work with, for this celeryconfig.py and REDIS_URL",
    )
    redis_acl.add_argument("--user", default="pubtasks", help="the user's name (pubtasks)")
    redis_acl.set_defaults(run=redis_acl_command)
    bench_parser = sub.add_parser(
        "bench",
        help="measure confirmed-publish throughput against the pika example's pattern, "
        "tick fidelity and memory, and with --restart-broker the recovery from a broker "
        "restart (reads AMQP_URL, REDIS_URL)",
    )
    bench_arguments(bench_parser)
    bench_parser.set_defaults(run=bench_command)
    return top


def bench_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--entries",
        type=int,
        default=0,
        help="the burst scenario instead: N entries every(PERIOD), all due at once",
    )
    parser.add_argument("--period", type=float, default=10.0, help="the bursts' period (10 s)")
    parser.add_argument("--bursts", type=int, default=3, help="bursts measured (3)")
    parser.add_argument(
        "--restart-broker",
        action="store_true",
        help="part c: stop and start the local RabbitMQ node's app with rabbitmqctl while "
        "the worker runs (it cuts every client of that broker; off by default)",
    )


def bench_command(args: argparse.Namespace) -> int:
    """``pubtasks bench``: the bench is imported only when it runs, so that the other
    commands (``pubtasks stats``, ``health``...) load nothing of it."""
    from pubtasks.bench.command import command  # noqa: PLC0415 - kept off the other commands

    return command(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PubtasksError as exc:
        print(f"pubtasks: error: {exc}", file=sys.stderr)
        return 2
