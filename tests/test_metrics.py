"""Unit tests: what ``pubtasks metrics`` serves for a reading of Redis (no services needed)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from celery.schedules import crontab
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pubtasks.control import State
from pubtasks.health import Fleet
from pubtasks.inventory import Inventory
from pubtasks.keys import LATENCY_BUCKETS
from pubtasks.metrics import Reading, Schedule, StatsCollector, families, holder_parts
from pubtasks.records import Counts, Latency, Snapshot
from pubtasks.schedule import every
from pubtasks.stats import Stats
from tests.support.nodes import free_port

NOW = 1_000.0


def state(**changes: object) -> State:
    fields: dict[str, object] = {
        "holder": "web-1.example.org.4711.3fa2c1",
        "holder_ttl": 9.5,
        "paused": {},
        "resumed": {},
        "triggered": {},
        "last": {},
        "waiting": 0,
    }
    return State(**{**fields, **changes})  # type: ignore[arg-type]


def reading(**changes: object) -> Reading:
    counts = Counts(
        published=10,
        acked=8,
        nacked=1,
        returned=1,
        unconfirmed=1,
        pending=0,
        ticks=9,
        ticks_late=2,
        ticks_manual=1,
        skipped=7,
        skipped_paused=4,
        skipped_catch_up=2,
        skipped_window=1,
        last_confirmed_at=NOW - 1,
    )
    snap = Snapshot(
        totals=counts,
        last_message_number=10,
        oldest_pending_at=None,
        last_error={"at": "990.5", "entry": "one", "message_id": "one@1", "reason": "nacked 3x"},
        entries={"one": counts},
    )
    per_bucket = [(le, 0) for le in LATENCY_BUCKETS] + [(math.inf, 0)]
    per_bucket[3] = (LATENCY_BUCKETS[3], 5)  # 10 ms
    cumulative = tuple((le, 5 if i >= 3 else 0) for i, (le, _) in enumerate(per_bucket))
    latency = Latency(cumulative, 5, 0.04)
    fields: dict[str, object] = {
        "snapshot": snap,
        "state": state(),
        "latencies": {"one": latency},
        "fleet": Fleet(workers=2, beat="web-1.example.org.4711.3fa2c1", since=NOW - 30),
    }
    return Reading(**{**fields, **changes})  # type: ignore[arg-type]


SCHEDULE = Schedule(
    {
        "one": {"task": "pubtasks.publish", "schedule": every(2)},
        "two": {"task": "pubtasks.publish", "schedule": every()},
    },
    publish_interval=1.0,
    confirm_timeout=30.0,
)


Sample = tuple[str, frozenset[tuple[str, str]]]


def samples(r: Reading, schedule: Schedule = SCHEDULE) -> dict[Sample, float]:
    """Every sample served, by name and labels: through prometheus_client's own text
    format and parser, as Prometheus reads them."""

    class One(Collector):
        def collect(self) -> Iterable[Metric]:
            return families(r, schedule, NOW)

    registry = CollectorRegistry()
    registry.register(One())
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def one(name: str, **labels: str) -> Sample:
    return name, frozenset(labels.items())


def test_counters_are_served_with_total_and_an_entry_label() -> None:
    got = samples(reading())
    for name, value in (
        ("published", 10),
        ("acked", 8),
        ("nacked", 1),
        ("returned", 1),
        ("unconfirmed", 1),
        ("failed", 0),
        ("ticks", 9),
        ("ticks_late", 2),
        ("ticks_manual", 1),
    ):
        assert got[one(f"pubtasks_{name}_total", entry="one")] == value
    assert got[one("pubtasks_redis_up")] == 1


def test_ticks_skipped_are_served_by_entry_and_reason() -> None:
    got = samples(reading())
    for reason, n in (("paused", 4), ("catch_up", 2), ("window", 1)):
        assert got[one("pubtasks_skipped_total", entry="one", reason=reason)] == n


def test_latency_is_a_histogram_per_entry_from_1_ms_to_60_s() -> None:
    got = samples(reading())
    name = "pubtasks_tick_confirm_latency_seconds"
    assert got[one(f"{name}_bucket", entry="one", le="0.001")] == 0
    assert got[one(f"{name}_bucket", entry="one", le="0.01")] == 5
    assert got[one(f"{name}_bucket", entry="one", le="60.0")] == 5
    assert got[one(f"{name}_bucket", entry="one", le="+Inf")] == 5
    assert (got[one(f"{name}_count", entry="one")], got[one(f"{name}_sum", entry="one")]) == (
        5,
        0.04,
    )
    les = {dict(labels)["le"] for n, labels in got if n == f"{name}_bucket"}
    assert len(les) == len(LATENCY_BUCKETS) + 1


def test_the_beat_holder_is_named_by_host_and_pid() -> None:
    got = samples(reading())
    holder = "web-1.example.org.4711.3fa2c1"
    assert got[
        one("pubtasks_beat_holder_info", holder=holder, host="web-1.example.org", pid="4711")
    ]
    assert got[one("pubtasks_beat_lock_held")] == 1
    assert got[one("pubtasks_beat_lock_ttl_seconds")] == 9.5
    free = samples(reading(state=state(holder=None, holder_ttl=None)))
    assert free[one("pubtasks_beat_lock_held")] == 0
    assert not [n for n, _ in free if n == "pubtasks_beat_holder_info"]
    assert holder_parts("odd") == ("odd", "")


def test_paused_health_and_interval_cover_every_entry_of_the_schedule() -> None:
    # Given entry two of the schedule, paused, and never published
    got = samples(reading(state=state(paused={"two": NOW - 5})))
    assert got[one("pubtasks_paused", entry="one")] == 0
    assert got[one("pubtasks_paused", entry="two")] == 1
    assert got[one("pubtasks_schedule_interval_seconds", entry="one")] == 2
    assert got[one("pubtasks_schedule_interval_seconds", entry="two")] == 1
    # Then one (confirmed 1 s ago, every 2 s) is healthy, and two, paused, is too
    assert got[one("pubtasks_healthy", entry="one")] == 1
    assert got[one("pubtasks_healthy", entry="two")] == 1
    # Unpaused, two has no confirm for its ticks since the start, 30 s ago: unhealthy
    assert samples(reading())[one("pubtasks_healthy", entry="two")] == 0


def test_a_run_time_entry_has_its_interval_served_so_its_no_confirm_alert_can_fire() -> None:
    # Given an entry added at run time (pubtasks schedule add) beside the config's two
    added = {"task": "pubtasks.publish", "schedule": every(5)}
    found = Inventory(
        {**SCHEDULE.beat_schedule, "added": added},
        {"one": "config", "two": "config", "added": "runtime"},
    )
    got = samples(reading(inventory=found))
    # Then its interval is served, as the config's are (PubtasksNoConfirm joins on it)
    assert got[one("pubtasks_schedule_interval_seconds", entry="added")] == 5
    assert got[one("pubtasks_schedule_interval_seconds", entry="one")] == 2


def test_health_is_served_for_every_schedule_and_is_0_for_a_dead_fleet() -> None:
    # Given a crontab entry beside an interval one, and a beat that started 30 s ago
    schedule = Schedule(
        {
            "one": {"task": "pubtasks.publish", "schedule": every(2)},
            "nightly": {"task": "pubtasks.publish", "schedule": crontab(minute=0, hour=3)},
        }
    )
    # Then the crontab, never confirmed, is healthy before its tick, and has no interval
    got = samples(reading(), schedule)
    assert got[one("pubtasks_healthy", entry="nightly")] == 1
    assert one("pubtasks_schedule_interval_seconds", entry="nightly") not in got
    # But with no worker alive, every entry is unhealthy, the same as `pubtasks health`
    dead = samples(reading(fleet=Fleet(workers=0, beat=None, since=NOW - 30)), schedule)
    assert dead[one("pubtasks_healthy", entry="one")] == 0
    assert dead[one("pubtasks_healthy", entry="nightly")] == 0


def test_the_last_error_and_the_confirm_timeout_are_served() -> None:
    got = samples(reading())
    labels = {"entry": "one", "message_id": "one@1", "reason": "nacked 3x"}
    assert got[one("pubtasks_last_error_timestamp_seconds", **labels)] == 990.5
    assert got[one("pubtasks_confirm_timeout_seconds")] == 30
    assert got[one("pubtasks_oldest_pending_age_seconds")] == 0


def test_latency_buckets_are_rising_and_span_1_ms_to_60_s() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_a_scrape_while_redis_is_down_answers_redis_up_0_alone() -> None:
    # Given an exporter whose Redis refuses connections (a port nobody listens on)
    stats = Stats.from_url(f"redis://127.0.0.1:{free_port()}/0", "pubtasks-test:", retries=0)
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats, SCHEDULE))
    try:
        text = generate_latest(registry).decode()
    finally:
        stats.close()
    # Then the scrape still answers, and says Redis is down, with nothing made up
    served = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert [(s.name, s.value) for s in served] == [("pubtasks_redis_up", 0)]
