"""The ``pubtasks bench`` command line: its arguments, the run, and the output."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from pubtasks import defaults
from pubtasks.bench.broker import Broker
from pubtasks.bench.burst import burst_run
from pubtasks.bench.names import Names
from pubtasks.bench.report import render
from pubtasks.bench.services import delete_queues, forget_celery_keys
from pubtasks.bench.throughput import kombu_confirm, pika_baseline, pubtasks_tick
from pubtasks.bench.ticks import worker_run
from pubtasks.celery import app
from pubtasks.framing import serialize_properties
from pubtasks.message import Tick, properties
from pubtasks.settings import Settings
from pubtasks.urls import mask_url

THROUGHPUT_PARTS = ("pika", "kombu", "pubtasks", "pubtasks-public")
#: Sizes of a message's serialised properties, in bytes, that pika publishes with apart:
#: RabbitMQ took messages whose properties fit in 64 bytes markedly faster (3.10).
PROPERTY_SIZES = (64, 96)


def tick_properties(messages: int) -> dict[str, Any]:
    """The properties of the last message of the bench's tick (the longest message_id)."""
    tick = Tick(defaults.DEFAULT_ENTRY, time.time(), 1, messages)
    return properties(tick, tick.messages()[-1], time.time(), None)


def exact(counts: list[dict[str, Any]], messages: int) -> bool:
    """Whether Redis counted every message of every round exactly."""
    return all(c["invariant_holds"] and c["published"] == c["acked"] == messages for c in counts)


def throughput(settings: Settings, names: Names, args: argparse.Namespace) -> dict[str, Any]:
    """Part a. pika and pubtasks (both ways) take turns, each on a fresh queue, ``rounds``
    times: on a shared 2-core machine one run of either varies by 10-20 %; medians do not."""
    url, n, size = Broker.of(settings), args.messages, args.size
    rates: dict[str, list[float]] = {
        "pika": [],
        "pubtasks_batch": [],
        "pubtasks_public": [],
        **{f"pika_properties_{b}": [] for b in PROPERTY_SIZES},
    }
    counts: dict[str, list[dict[str, Any]]] = {"pubtasks_batch": [], "pubtasks_public": []}
    queues = [names.queue(part) for part in THROUGHPUT_PARTS]
    for _ in range(args.rounds):
        rates["pika"].append(pika_baseline(url, names, n, size))
        for b in PROPERTY_SIZES:  # RabbitMQ and the size of the properties, on its own
            rates[f"pika_properties_{b}"].append(pika_baseline(url, names, n, size, b))
        for way, batch_writes in (("pubtasks_batch", True), ("pubtasks_public", False)):
            rate, counted = pubtasks_tick(settings, names, n, size, batch_writes=batch_writes)
            rates[way].append(rate)
            counts[way].append(counted)
        delete_queues(url, queues)
    medians = {way: round(statistics.median(r)) for way, r in rates.items()}
    return {
        # Redis counted every message of every round exactly (the last round shown).
        "pubtasks_batch_counted": counts["pubtasks_batch"][-1],
        "pubtasks_batch_exact_every_round": exact(counts["pubtasks_batch"], n),
        "pubtasks_public_exact_every_round": exact(counts["pubtasks_public"], n),
        "pika_msgs_per_s": medians["pika"],
        "pubtasks_batch_msgs_per_s": medians["pubtasks_batch"],
        "pubtasks_public_msgs_per_s": medians["pubtasks_public"],
        "rounds": {way: [round(r) for r in rs] for way, rs in rates.items()},
        "pubtasks_vs_pika": round(medians["pubtasks_batch"] / medians["pika"], 2),
        "pubtasks_public_vs_pika": round(medians["pubtasks_public"] / medians["pika"], 2),
        "properties_msgs_per_s": {b: medians[f"pika_properties_{b}"] for b in PROPERTY_SIZES},
        "properties_bytes": len(serialize_properties(tick_properties(n))),
        "kombu_confirm_msgs_per_s": round(kombu_confirm(url, names, n, size)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = app.settings  # the environment and celeryconfig, as the worker reads them
    names = Names()
    report: dict[str, Any] = {
        "broker": mask_url(settings.amqp_url),
        "messages": args.messages,
        "size": args.size,
        "confirm_window": settings.confirm_window,
    }
    try:
        report.update(throughput(settings, names, args))
        if args.tick_seconds > 0:
            report["ticks"] = worker_run(
                settings, names, args.interval, args.tick_seconds, restart=args.restart_broker
            )
    finally:
        queues = [names.queue(part) for part in (*THROUGHPUT_PARTS, "ticks")]
        delete_queues(Broker.of(settings), queues, exchange=names.exchange)
        forget_celery_keys(settings.redis_url, names.prefix)
    return report


def burst(args: argparse.Namespace) -> dict[str, Any]:
    settings = app.settings
    names = Names()
    report: dict[str, Any] = {"broker": mask_url(settings.amqp_url), "burst": {}}
    try:
        report["burst"] = burst_run(
            settings, names, args.entries, period=args.period, bursts=args.bursts, size=args.size
        )
    finally:
        queues = [names.queue(part) for part in ("burst", *THROUGHPUT_PARTS)]
        delete_queues(Broker.of(settings), queues, exchange=names.exchange)
        forget_celery_keys(settings.redis_url, names.prefix)
    return report


def burst_lines(report: dict[str, Any]) -> str:
    b = report["burst"]
    return "\n".join([
        f"burst: {b['entries']} entries every {b['period']:g} s, {b['bursts']} bursts "
        f"on {report['broker']}",
        f"delivered          {b['delivered']} of {b['expected']} (per burst "
        f"{b['delivered_per_burst']}); counters equal RabbitMQ's: {b['counters_equal_received']}",
        f"last of a burst    {b['last_lateness_s']} s after its time (in RabbitMQ's queue)",
        f"p50, p99 of all    {b['p50_s']} s, {b['p99_s']} s",
        f"raw confirmed      {b['raw_confirmed_msgs_per_s']} msgs/s (one tick of "
        f"{b['entries']}: the limit); the burst {b['burst_msgs_per_s']} msgs/s; "
        f"limit/burst {b.get('limit_vs_burst')}",
        f"worker             ready in {b['ready_s']} s; RSS {b['rss_mib']} MiB",
    ])  # fmt: skip


def command(args: argparse.Namespace) -> int:
    if args.entries > 0:
        report = burst(args)
        print(json.dumps(report, sort_keys=True) if args.json else burst_lines(report))
        return 0
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
