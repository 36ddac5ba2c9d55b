"""``pubtasks metrics``: the Redis counters as Prometheus metrics, read at each scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pubtasks.stats import COUNTERS, Stats

HELP = {
    "published": "basic.publish sent (each attempt), counted before sending",
    "acked": "publishes RabbitMQ acked (returned ones included)",
    "nacked": "publishes RabbitMQ nacked",
    "returned": "publishes acked but returned unroutable (basic.return)",
    "unconfirmed": "publishes whose connection or channel was lost, or timed out, before an answer",
    "failed": "messages given up, with a reason (see pubtasks stats)",
}


class StatsCollector(Collector):
    """Reads one snapshot per scrape: counters and gauges labelled by schedule entry."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        for name in COUNTERS:
            family = CounterMetricFamily(f"pubtasks_{name}", HELP[name], labels=["entry"])
            for entry, counts in sorted(snap.entries.items()):
                family.add_metric([entry], getattr(counts, name))
            yield family
        pending = GaugeMetricFamily(
            "pubtasks_pending", "publishes awaiting their confirm", labels=["entry"]
        )
        for entry, counts in sorted(snap.entries.items()):
            pending.add_metric([entry], counts.pending)
        yield pending
        age = snap.oldest_pending_at
        yield GaugeMetricFamily(
            "pubtasks_oldest_pending_age_seconds",
            "age of the oldest publish awaiting its confirm (0 when none)",
            value=0.0 if age is None else max(time.time() - age, 0.0),
        )
        confirmed = GaugeMetricFamily(
            "pubtasks_last_confirmed_timestamp_seconds",
            "when the entry's last message was confirmed",
            labels=["entry"],
        )
        for entry, counts in sorted(snap.entries.items()):
            if counts.last_confirmed_at is not None:
                confirmed.add_metric([entry], counts.last_confirmed_at)
        yield confirmed
