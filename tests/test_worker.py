"""End to end: the real ``celery -A pubtasks worker -B`` against the real services."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pubtasks.stats import Stats
from pubtasks.waiting import wait_for
from tests.helpers import (
    Received,
    Worker,
    close_connections,
    drain,
    queue_depth,
    queued_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

INTERVAL = 0.2


def acked_at_least(stats: Stats, n: int) -> bool:
    return stats.snapshot().totals.acked >= n


def check_ticks(received: list[Received], interval: float) -> list[Received]:
    """No tick lost: one message per grid point from the first to the last, numbered 1, 2, 3..."""
    by_id = {m.properties["message_id"]: m for m in received}
    ticks = sorted(by_id.values(), key=lambda m: m.body["scheduled_at"])
    times = [m.body["scheduled_at"] for m in ticks]
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(times)}
    assert gaps == {interval}, f"scheduled times are not one interval apart: {sorted(gaps)}"
    numbers = [m.body["message_number"] for m in ticks]
    assert numbers == list(range(1, len(ticks) + 1)), numbers
    return ticks


def test_the_worker_publishes_every_tick_once_and_the_counters_agree(
    worker: Worker, stats: Stats, amqp_url: str
) -> None:
    # Given the real worker with beat at 0.2 s
    worker.start()
    # When it has run for a few seconds (15 confirmed ticks) and is stopped warmly
    wait_for(lambda: acked_at_least(stats, 15), 30, "15 acked ticks")
    assert worker.stop() == 0, worker.log
    # Then RabbitMQ holds exactly what Redis counted as acked
    snap = stats.snapshot()
    t = snap.totals
    assert queue_depth(amqp_url, "text") == t.acked
    received = drain(amqp_url, "text")
    # ... with unique message_ids, gap-free numbers, one per tick of the grid
    assert len({m.properties["message_id"] for m in received}) == len(received)
    ticks = check_ticks(received, INTERVAL)
    assert len(ticks) >= 15
    assert (t.published, t.acked, t.nacked, t.unconfirmed, t.pending, t.failed) == (
        len(ticks),
        len(ticks),
        0,
        0,
        0,
        0,
    )
    assert t.invariant_holds
    # Beat fires until the very end of a warm shutdown; those ticks wait in Redis
    # for the next start (tally() in the fault suite counts them the same way).
    assert snap.last_message_number == len(ticks) + len(queued_ids(stats.client, stats.keys.prefix))
    assert t.last_confirmed_number == len(ticks)
    assert snap.entries["publish-text"].acked == len(ticks)
    for m in ticks:
        assert m.properties["message_id"] == f"publish-text@{round(m.body['scheduled_at'] * 1000)}"
        assert m.properties["app_id"] == "pubtasks"
        assert m.properties["delivery_mode"] == 2
        assert m.body["published_at"] >= m.body["scheduled_at"]
    assert "Traceback" not in worker.log


def test_publishing_continues_when_rabbitmq_closes_the_connection(
    worker: Worker, stats: Stats, amqp_url: str, vhost: str
) -> None:
    # Given a running worker that has confirmed a few ticks
    worker.start()
    wait_for(lambda: acked_at_least(stats, 5), 30, "5 acked ticks")
    # When RabbitMQ closes the publisher's connections mid-run, twice
    for round_ in (1, 2):
        assert close_connections(vhost) >= 1
        target = stats.snapshot().totals.acked + 5
        wait_for(lambda n=target: acked_at_least(stats, n), 30, f"5 more acks after close {round_}")
    assert worker.stop() == 0, worker.log
    # Then no tick is lost (a tick cut mid-publish may arrive twice, with the same id)
    t = stats.snapshot().totals
    received = drain(amqp_url, "text")
    ticks = check_ticks(received, INTERVAL)
    assert len(received) == t.acked
    assert t.failed == 0
    assert t.invariant_holds and t.pending == 0
    assert t.published == t.acked + t.unconfirmed
    assert len(ticks) >= 15
    assert "Traceback" not in worker.log


def test_stats_cli_agrees_with_the_queue(
    worker: Worker, stats: Stats, amqp_url: str, prefix: str, redis_url: str
) -> None:
    worker.start()
    wait_for(lambda: acked_at_least(stats, 5), 30, "5 acked ticks")
    worker.stop()
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "pubtasks", "stats", "--json", "--prefix", prefix],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    got = json.loads(out.stdout)
    depth = queue_depth(amqp_url, "text")
    assert got["acked"] == got["published"] == depth
    for key in ("nacked", "returned", "unconfirmed", "pending", "failed"):
        assert got[key] == 0, key
    queued = len(queued_ids(stats.client, prefix))
    assert got["last_message_number"] == depth + queued
    table = subprocess.run(
        [str(Path(sys.executable).with_name("pubtasks")), "stats", "--prefix", prefix],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "publish-text" in table
    assert "invariant            holds" in table
