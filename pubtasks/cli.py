"""The ``pubtasks`` command: ``pubtasks stats [--json]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pubtasks import defaults
from pubtasks.errors import PubtasksError
from pubtasks.settings import REDIS_SCHEMES, check_url, mask_url
from pubtasks.stats import COUNTERS, Counts, Snapshot, Stats

COLUMNS = (*COUNTERS[:-1], "pending", "failed")


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    return f"{stamp} ({now - at:.1f} s ago)"


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
        else f"#{t.last_confirmed_number} at {_when(t.last_confirmed_at, now)}"
    )
    error = (
        " ".join(f"{k}={v}" for k, v in sorted(snap.last_error.items())) if snap.last_error else "-"
    )
    verdict = "holds" if t.invariant_holds else "BROKEN"
    lines += [
        "",
        f"last message number  {snap.last_message_number}",
        f"last confirmed       {confirmed}",
        f"oldest pending       {_when(snap.oldest_pending_at, now)}",
        f"invariant            {verdict} (published = acked + nacked + unconfirmed + pending)",
        f"last error           {error}",
    ]
    return "\n".join(lines)


def _prefix() -> str:
    """STATS_PREFIX from celeryconfig when there is one, as the worker would read it."""
    from pubtasks.app import app

    return str(app.conf.get("STATS_PREFIX") or defaults.STATS_PREFIX)


def stats_command(args: argparse.Namespace) -> int:
    url = check_url("REDIS_URL", os.environ.get("REDIS_URL") or defaults.REDIS_URL, REDIS_SCHEMES)
    prefix = args.prefix or _prefix()
    stats = Stats.from_url(url, prefix)
    snap = stats.snapshot()
    now = time.time()
    if args.json:
        print(json.dumps(snap.as_json(now), sort_keys=True))
    else:
        print(render_table(snap, mask_url(url), prefix, now))
    return 0


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
    stats.set_defaults(run=stats_command)
    bench = sub.add_parser(
        "bench",
        help="measure confirmed-publish throughput against the pika example's pattern, "
        "tick fidelity, broker-restart recovery and memory (reads AMQP_URL, REDIS_URL)",
    )
    bench_args(bench)
    bench.set_defaults(run=bench_command)
    return top


def bench_args(parser: argparse.ArgumentParser) -> None:
    from pubtasks import bench

    bench.add_arguments(parser)


def bench_command(args: argparse.Namespace) -> int:
    from pubtasks import bench

    return bench.command(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PubtasksError as exc:
        print(f"pubtasks: error: {exc}", file=sys.stderr)
        return 2
