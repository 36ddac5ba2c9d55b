"""The bench's report as Markdown: what ``docs/performance.md`` holds."""

from __future__ import annotations

from typing import Any

from pubtasks.bench.throughput import PIKA_WINDOW


def met(ratio: float) -> str:
    return "met" if ratio >= 1.0 else "not met"


def render(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
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
        f"| pubtasks, batched writes (`BATCH_WRITES = True`, the default; confirm window "
        f"{report['confirm_window']}, counted in Redis) | {report['pubtasks_batch_msgs_per_s']} |",
        f"| pubtasks, each message through py-amqp's `basic_publish` (`BATCH_WRITES = False`) "
        f"| {report['pubtasks_public_msgs_per_s']} |",
        "",
        f"pubtasks / pika: **{report['pubtasks_vs_pika']}x** (target: at least 1.0x, "
        f"{met(report['pubtasks_vs_pika'])}); without batched writes "
        f"{report['pubtasks_public_vs_pika']}x. Every run, msg/s: "
        f"pika {rounds.get('pika')}, pubtasks {rounds.get('pubtasks_batch')}, "
        f"pubtasks without batched writes {rounds.get('pubtasks_public')}.",
    ]
    sizes = report.get("properties_msgs_per_s")
    if sizes:
        lines += [
            "",
            "Every message carries `message_id`, `app_id`, `content_type`, `timestamp` and "
            f"`delivery_mode`; here the longest take {report['properties_bytes']} bytes "
            "serialised. pika, publishing the same way with properties of a set size "
            "(the message_id padded), shows what their size costs at RabbitMQ, medians:",
            "",
            "| serialised properties | msg/s |",
            "|---|---:|",
            *(f"| {b} bytes | {rate} |" for b, rate in sizes.items()),
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
            "| latency, scheduled tick to its arrival in RabbitMQ's queue, p50 "
            f"| {g.get('latency_p50_ms')} ms | |",
            "| latency, scheduled tick to its arrival in RabbitMQ's queue, p99 "
            f"| {g.get('latency_p99_ms')} ms | <= 20 ms |",
            f"| largest distance of tick k from t0 + k x interval | {g['max_drift_ms']} ms "
            "| <= 5 ms |",
            f"| extra ticks at startup | {g['extra_at_startup']} | 0 |",
            f"| Celery `timedelta` entry beside it: drift | {td.get('drift_ms_total')} ms "
            f"over {td.get('ticks')} ticks ({td.get('drift_ms_per_tick')} ms per tick) | |",
            f"| RSS of all the worker's processes at the end | {ticks['rss_mib']} MiB | |",
        ]
        if "recovery_s" in ticks:
            lines.append(
                f"| broker restart (`--restart-broker`): accepting connections to the next "
                f"confirm | {ticks['recovery_s']} s | <= 2 s |"
            )
    return "\n".join(lines)
