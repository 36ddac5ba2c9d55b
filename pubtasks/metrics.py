"""``pubtasks metrics``: the Redis counters as Prometheus metrics, read at each scrape.

``read`` does the I/O (the snapshot in two round trips, the control state and the
latency histograms in one each, what is alive in two); ``families`` turns a ``Reading``
into metric families and is pure.
When Redis cannot be read, a scrape still answers, with ``pubtasks_redis_up 0``, so
that an alert can say "Redis" rather than "the exporter is down".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pubtasks import defaults, inventory
from pubtasks.control import Control, State
from pubtasks.entries import publish_entries
from pubtasks.errors import StatsUnavailable
from pubtasks.health import Fleet, Following, intervals, read_fleet, schedules, verdicts
from pubtasks.inventory import Inventory
from pubtasks.keys import COUNTERS, TICKS
from pubtasks.listing import STATES
from pubtasks.records import Latency, Snapshot
from pubtasks.specs import SOURCES
from pubtasks.stats import Stats

log = logging.getLogger(__name__)

HELP = {
    "published": "basic.publish sent (each attempt), counted before sending",
    "acked": "publishes RabbitMQ acked (returned ones included)",
    "nacked": "publishes RabbitMQ nacked",
    "returned": "publishes acked but returned unroutable (basic.return)",
    "unconfirmed": "publishes whose connection or channel was lost, or timed out, before an answer",
    "failed": "messages given up, with a reason (see pubtasks stats)",
    "ticks": "ticks beat fired on the schedule (each once, whoever fired it)",
    "ticks_late": "ticks fired more than one interval after their time on the schedule",
    "ticks_manual": "ticks fired by hand (pubtasks schedule trigger)",
}


@dataclass(frozen=True)
class Schedule:
    """What the exporter knows of the schedule: ``celeryconfig.py``, as the worker reads it."""

    beat_schedule: Mapping[str, Any] = field(default_factory=dict)
    publish_interval: float = defaults.PUBLISH_INTERVAL
    confirm_timeout: float = defaults.CONFIRM_TIMEOUT
    timezone: tzinfo = UTC  # Celery's, for crontabs without a zone of their own

    @property
    def schedules(self) -> dict[str, Following | None]:
        return schedules(self.beat_schedule, self.publish_interval, self.timezone)


@dataclass(frozen=True)
class Reading:
    """Everything one scrape shows, read from Redis."""

    snapshot: Snapshot
    state: State
    latencies: dict[str, Latency]
    fleet: Fleet
    inventory: Inventory = field(default_factory=Inventory)


def read(stats: Stats, schedule: Schedule | None = None) -> Reading:
    schedule = schedule or Schedule()
    snapshot = stats.snapshot()
    found = inventory.take(stats, schedule.beat_schedule, schedule.timezone)
    state = Control(stats).state(list(found.entries))
    latencies = stats.latencies(snapshot.entries)
    return Reading(snapshot, state, latencies, read_fleet(stats, state.holder), found)


def holder_parts(holder: str) -> tuple[str, str]:
    """(host, pid) of a beat lock holder ``<host>.<pid>.<id>`` (a host may hold dots)."""
    parts = holder.rsplit(".", 2)
    return (parts[0], parts[1]) if len(parts) == 3 else (holder, "")


def _per_entry(
    name: str,
    text: str,
    values: Mapping[str, float],
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily] = GaugeMetricFamily,
) -> Metric:
    family = kind(name, text, labels=["entry"])
    for entry, value in sorted(values.items()):
        family.add_metric([entry], value)
    return family


def _le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def families(r: Reading, schedule: Schedule, now: float) -> Iterator[Metric]:
    """The metric families of one reading, taken at ``now``."""
    entries = r.snapshot.entries
    yield GaugeMetricFamily("pubtasks_redis_up", "1 when Redis answered this scrape", value=1)
    for name in COUNTERS + TICKS:
        values = {e: getattr(c, name) for e, c in entries.items()}
        yield _per_entry(f"pubtasks_{name}", HELP[name], values, CounterMetricFamily)
    skipped = CounterMetricFamily(
        "pubtasks_skipped",
        "ticks of the schedule not fired, by reason: paused, catch_up (the entry's policy), "
        "window (more than catch_up_within late), overlap (the previous tick unsettled)",
        labels=["entry", "reason"],
    )
    for entry, c in sorted(entries.items()):
        for reason, n in c.skipped_by().items():
            skipped.add_metric([entry, reason], n)
    yield skipped
    yield _per_entry(
        "pubtasks_pending",
        "publishes awaiting their confirm",
        {e: c.pending for e, c in entries.items()},
    )
    age = r.snapshot.oldest_pending_at
    yield GaugeMetricFamily(
        "pubtasks_oldest_pending_age_seconds",
        "age of the oldest publish awaiting its confirm (0 when none)",
        value=0.0 if age is None else max(now - age, 0.0),
    )
    yield _per_entry(
        "pubtasks_last_confirmed_timestamp_seconds",
        "when the entry's last message was confirmed",
        {e: c.last_confirmed_at for e, c in entries.items() if c.last_confirmed_at is not None},
    )
    latency = HistogramMetricFamily(
        "pubtasks_tick_confirm_latency_seconds",
        "from a tick's time on the schedule (or its request, by hand) to the ack of its message",
        labels=["entry"],
    )
    for entry, h in sorted(r.latencies.items()):
        buckets = [(_le(le), float(n)) for le, n in h.buckets]
        latency.add_metric([entry], buckets, sum_value=h.sum)
    yield latency
    yield from _beat(r.state)
    state = r.state
    found = (
        r.inventory
        if r.inventory.entries
        else Inventory(
            dict(publish_entries(schedule.beat_schedule)),
            dict.fromkeys(publish_entries(schedule.beat_schedule), SOURCES[0]),
        )
    )
    # Every entry's, run-time ones too: PubtasksNoConfirm joins on it.
    expected = intervals(found.entries, schedule.publish_interval)
    states = found.states(schedule.publish_interval, schedule.timezone, state)
    finished = {n for n, s in states.items() if s == "finished"}
    expecting = schedules(found.entries, schedule.publish_interval, schedule.timezone, finished)
    judged = verdicts(expecting, entries, now, r.fleet, paused=state.paused, resumed=state.resumed)
    counted = GaugeMetricFamily(
        "pubtasks_entries",
        "publish entries by source (config: celeryconfig.py; runtime: pubtasks schedule add) "
        "and state (active, paused, finished)",
        labels=["source", "state"],
    )
    by = found.counted(states)
    for source in SOURCES:
        for each in STATES:
            counted.add_metric([source, each], by.get((source, each), 0))
    yield counted
    known = set(entries) | {v.entry for v in judged} | set(r.state.paused)
    yield _per_entry(
        "pubtasks_paused",
        "1 while the entry is paused (pubtasks schedule pause)",
        {e: int(e in r.state.paused) for e in known},
    )
    yield _per_entry(
        "pubtasks_schedule_interval_seconds",
        "seconds between the ticks of each interval entry, of beat_schedule or added at "
        "run time (pubtasks schedule add)",
        expected,
    )
    yield _per_entry(
        "pubtasks_healthy",
        "1 when every tick the entry's schedule made due was confirmed within the grace, or "
        "it is paused, and a worker and a beat are alive (pubtasks health)",
        {v.entry: int(v.healthy) for v in judged},
    )
    yield GaugeMetricFamily(
        "pubtasks_confirm_timeout_seconds",
        "CONFIRM_TIMEOUT: a publish still pending after it is counted unconfirmed",
        value=schedule.confirm_timeout,
    )
    error = GaugeMetricFamily(
        "pubtasks_last_error_timestamp_seconds",
        "when the last error was recorded, labelled with its entry, message_id and reason",
        labels=["entry", "message_id", "reason"],
    )
    last = r.snapshot.last_error
    if last.get("at"):
        labels = [last.get(k, "") for k in ("entry", "message_id", "reason")]
        error.add_metric(labels, float(last["at"]))
    yield error


def _beat(state: State) -> Iterator[Metric]:
    held = state.holder is not None
    yield GaugeMetricFamily(
        "pubtasks_beat_lock_held", "1 while a beat holds the beat lock", value=int(held)
    )
    info = GaugeMetricFamily(
        "pubtasks_beat_holder_info",
        "the beat holding the beat lock: its host, pid and lock id (1)",
        labels=["holder", "host", "pid"],
    )
    if state.holder is not None:
        info.add_metric([state.holder, *holder_parts(state.holder)], 1)
    yield info
    yield GaugeMetricFamily(
        "pubtasks_beat_lock_ttl_seconds",
        "seconds until the beat lock expires unless its holder renews it (0 when free)",
        value=(state.holder_ttl or 0.0) if held else 0.0,
    )


class StatsCollector(Collector):
    """Reads Redis once per scrape: counters and gauges labelled by schedule entry."""

    def __init__(self, stats: Stats, schedule: Schedule | None = None) -> None:
        self.stats = stats
        self.schedule = schedule or Schedule()

    def collect(self) -> Iterator[Metric]:
        try:
            reading = read(self.stats, self.schedule)
        except StatsUnavailable as exc:
            log.warning("pubtasks metrics: %s", exc)
            yield GaugeMetricFamily(
                "pubtasks_redis_up", "1 when Redis answered this scrape", value=0
            )
            return
        yield from families(reading, self.schedule, time.time())
