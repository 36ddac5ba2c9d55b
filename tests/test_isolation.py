"""The real worker: sick entries beside a healthy one cost the healthy one nothing.

Sick entries: one whose routing key no queue binds (returned, ``on_return="retry"``),
one whose queue is full and rejects publishes (nacked), and one whose payload
function takes 3 s. Beside them, with the worker's default two processes, the
healthy entry must miss no tick: every point of its grid between the worker's start
(plus its start-up) and its stop is counted against what RabbitMQ received, and its
lateness is recorded next to the same entry's alone. No sick entry may flood
RabbitMQ: each has at most one retrying tick at a time (``pubtasks.lanes``).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from pubtasks.bench.waiting import wait_for
from pubtasks.stats import Stats
from tests.helpers import Worker, drain, record_replication, write_config

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

ROOT = Path(__file__).resolve().parent.parent
HEALTHY = "healthy"
INTERVAL = 0.2
#: Seconds the worker is given to start before its ticks are owed.
START_UP = 10.0
#: Seconds each phase runs once the ticks are owed.
RUN = 15.0

ALONE = """
beat_schedule = {
    "healthy": {"task": "pubtasks.publish", "schedule": every(0.2)},
}
"""

SICK = """
beat_schedule = {
    "healthy": {"task": "pubtasks.publish", "schedule": every(0.2)},
    "unroutable": {
        "task": "pubtasks.publish", "schedule": every(0.5),
        "kwargs": {"routing_key": "nobody.home"},
    },
    "nacked": {
        "task": "pubtasks.publish", "schedule": every(0.5),
        "kwargs": {"routing_key": "example.full"},
    },
    "slow": {
        "task": "pubtasks.publish", "schedule": every(0.5),
        "kwargs": {"routing_key": "example.slow", "payload": "tests.payloads:slow"},
    },
}
"""


def declare_sick_queues(amqp_url: str) -> None:
    """A queue that rejects every publish (nacks) and one that takes the slow payloads."""
    exchange = Exchange("message", "topic", durable=True)
    arguments = {"x-max-length": 0, "x-overflow": "reject-publish"}
    with Connection(amqp_url) as conn:
        Queue("full", exchange, "example.full", queue_arguments=arguments)(
            conn.default_channel
        ).declare()
        Queue("slow", exchange, "example.slow")(conn.default_channel).declare()


def run(worker: Worker, amqp_url: str) -> tuple[list[float], list[str], float]:
    """Run the worker for START_UP + RUN seconds; the healthy entry's grid points owed in
    that time (by the test's clock), the message ids RabbitMQ received for it, and the
    lateness of each (published_at - scheduled_at, from the messages)."""
    started = time.time()
    worker.start()
    owed_from = started + START_UP
    wait_for(lambda: time.time() > owed_from + RUN, START_UP + RUN + 5, "the run", 0.5)
    stopped = time.time()
    assert worker.stop() == 0, worker.log[-3000:]
    # Every grid point after the start-up allowance and a second before the stop is owed
    first, last = math.ceil(owed_from / INTERVAL), math.floor((stopped - 1.0) / INTERVAL)
    owed = [round(k * INTERVAL, 6) for k in range(first, last + 1)]
    got = [m for m in drain(amqp_url, "text") if m.properties["message_id"].startswith("healthy@")]
    due = ids_of(owed)
    lateness = [
        m.body["published_at"] - m.body["scheduled_at"]
        for m in got
        if m.properties["message_id"] in due
    ]
    return (
        owed,
        [m.properties["message_id"] for m in got],
        statistics.quantiles(lateness, n=100)[98],
    )


def ids_of(owed: list[float]) -> set[str]:
    return {f"{HEALTHY}@{round(t * 1000)}" for t in owed}


def test_sick_entries_beside_a_healthy_one_cost_it_no_tick(
    tmp_path: Path, worker_env: dict[str, str], prefix: str, redis_url: str, amqp_url: str
) -> None:
    env = {**worker_env, "PYTHONPATH": str(ROOT)}
    declare_sick_queues(amqp_url)
    alone_dir, sick_dir = tmp_path / "alone", tmp_path / "sick"
    alone_dir.mkdir()
    sick_dir.mkdir()
    alone_prefix, sick_prefix = f"{prefix}alone:", f"{prefix}sick:"
    write_config(alone_dir, alone_prefix, ALONE)
    write_config(sick_dir, sick_prefix, SICK)
    alone_stats = Stats.from_url(redis_url, alone_prefix)
    sick_stats = Stats.from_url(redis_url, sick_prefix)
    try:
        # Given the healthy entry alone
        w = Worker(alone_dir, dict(env))
        try:
            owed, got, alone_p99 = run(w, amqp_url)
        finally:
            w.stop()
        assert not ids_of(owed) - set(got), "the healthy entry alone missed ticks"
        # When it runs beside the three sick entries
        w = Worker(sick_dir, dict(env))
        try:
            owed, got, sick_p99 = run(w, amqp_url)
            log = w.log
        finally:
            w.stop()
        # Then it misses no tick: each owed grid point is a message RabbitMQ received
        missing = sorted(ids_of(owed) - set(got))
        assert not missing, f"{len(missing)} of {len(owed)} healthy ticks missing: {missing[:5]}"
        snap = sick_stats.snapshot()
        assert snap.entries[HEALTHY].failed == 0
        # And the sick ones were sick, and none flooded RabbitMQ. One retrying tick at a
        # time: the unroutable entry's one holder retries at most every 2 s once its
        # backoff has grown (0.1, 0.2, 0.4, 0.8, 1.6, then 2 s), so beyond one publish
        # per tick it sent at most 5 + seconds / 2; the nacked entry's holder makes at
        # most 4 retries per 7.5 s (its backoff before it fails) and the next holder
        # starts over. Ticks retrying each on its own would send several times that.
        unroutable, nacked, slow = (snap.entries[n] for n in ("unroutable", "nacked", "slow"))
        assert unroutable.returned > 0 and nacked.nacked > 0 and slow.acked > 0
        seconds = START_UP + RUN + 5
        assert unroutable.published <= unroutable.ticks + 5 + seconds / 2
        assert nacked.published <= nacked.ticks + 4 * (seconds / 7.5 + 1)
        assert slow.published <= seconds / 3 + 1  # one payload at a time
        # (a stop's own log lines are tests/test_group_stop.py's)
        assert "Traceback" not in log.partition("Warm shutdown")[0]
        record_replication(
            {
                "kind": "isolation",
                "healthy_p99_alone_s": round(alone_p99, 4),
                "healthy_p99_beside_sick_s": round(sick_p99, 4),
                "ratio": round(sick_p99 / alone_p99, 2),
                "owed": len(owed),
                "missing": len(missing),
                "unroutable_published_per_tick": round(
                    unroutable.published / max(unroutable.ticks, 1), 2
                ),
            }
        )
        print(f"healthy p99: alone {alone_p99 * 1000:.1f} ms, beside sick {sick_p99 * 1000:.1f} ms")
    finally:
        for s in (alone_stats, sick_stats):
            s.clear()
            s.close()
