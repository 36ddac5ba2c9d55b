"""End to end: the real ``celery -A pubtasks worker -B`` against the real services."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from pubtasks.bench.waiting import wait_for
from pubtasks.ids import scheduled_at_of
from pubtasks.stats import Stats
from tests.helpers import (
    Raw,
    Received,
    Worker,
    close_connections,
    drain,
    queue_depth,
    queued_ids,
    take,
    write_config,
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
    # for the next start (the fault suite's finish() then publishes them).
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


#: Four entries at once: the default, a fanout heartbeat of its own, a payload beside
#: celeryconfig.py, and a payload that always raises.
ENTRIES = """
from kombu import Exchange

EXCHANGES = [Exchange("heartbeat", "fanout")]
beat_schedule = {
    "publish-text": {"task": "pubtasks.publish", "schedule": every()},
    "heartbeat": {
        "task": "pubtasks.publish",
        "schedule": every(),
        "kwargs": {
            "exchange": "heartbeat",
            "routing_key": "",
            "body": {"alive": True},
            "headers": {"مفتاح": " قيمة", "键": "值", "キー": "値"},
            "properties": {"priority": 5, "expiration": 60000},
        },
    },
    "snapshot": {
        "task": "pubtasks.publish",
        "schedule": every(),
        "kwargs": {"payload": "snapshots:take", "routing_key": "example.text"},
    },
    "broken": {
        "task": "pubtasks.publish",
        "schedule": every(),
        "kwargs": {"payload": "snapshots:fail"},
    },
}
"""

ARABIC = {"مفتاح": " قيمة", "键": "值", "キー": "値"}  # the pika example's header keys

SNAPSHOTS = """
def take(*, entry, scheduled_at, message_number, message_id):
    return {"entry": entry, "number": message_number, "id": message_id, "at": scheduled_at}


def fail(**_):
    raise RuntimeError("no snapshot today")
"""


def test_each_entry_publishes_its_own_message_and_is_counted_apart(
    worker: Worker, worker_dir: Path, prefix: str, stats: Stats, amqp_url: str
) -> None:
    # Given the real worker with four entries, a payload module beside celeryconfig.py,
    # and a consumer's queue bound to the fanout before the first heartbeat
    write_config(worker_dir, prefix, ENTRIES)
    (worker_dir / "snapshots.py").write_text(SNAPSHOTS)
    with Connection(amqp_url) as conn:
        heartbeat = Exchange("heartbeat", "fanout")
        Queue("watcher", heartbeat, durable=False)(conn.default_channel).declare()
    worker.start()

    # When each entry has ticked a few times
    def enough() -> bool:
        e = stats.snapshot().entries
        ok = all(
            name in e and e[name].acked >= 8 for name in ("publish-text", "heartbeat", "snapshot")
        )
        return ok and "broken" in e and e["broken"].failed >= 8

    wait_for(enough, 60, "8 ticks of each entry")
    assert worker.stop() == 0, worker.log

    # Then each entry's messages are its own, and its counters are exact
    snap = stats.snapshot()
    in_text = take(amqp_url, "text")
    hearts = take(amqp_url, "watcher")
    taken_at = time.time()
    by_entry: dict[str, list[Raw]] = {"publish-text": [], "snapshot": [], "heartbeat": hearts}
    for m in in_text:
        by_entry[m.properties["message_id"].split("@")[0]].append(m)
    for name, got in by_entry.items():
        e = snap.entries[name]
        assert (e.published, e.acked, e.nacked, e.unconfirmed, e.failed) == (
            len(got),
            len(got),
            0,
            0,
            0,
        ), name
        times = sorted(scheduled_at_of(m.properties["message_id"]) for m in got)
        assert {round(b - a, 6) for a, b in itertools.pairwise(times)} == {INTERVAL}, name
        for m in got:
            p = m.properties
            assert p["app_id"] == "pubtasks" and p["delivery_mode"] == 2, name
            # the publish time, in whole seconds: not before the tick, not after it was read
            assert math.floor(scheduled_at_of(p["message_id"])) <= p["timestamp"], name
            assert p["timestamp"] <= taken_at + 1, name

    for m in by_entry["publish-text"]:
        assert m.properties["content_type"] == "application/json"
        assert "application_headers" not in m.properties
        assert json.loads(m.body)["entry"] == "publish-text"
    for m in hearts:
        p = m.properties
        assert json.loads(m.body) == {"alive": True}
        assert (p["priority"], p["expiration"], p["content_type"]) == (
            5,
            "60000",
            "application/json",
        )
        headers = p["application_headers"]
        assert {k: headers[k] for k in ("مفتاح", "键", "キー")} == {
            "مفتاح": " قيمة",
            "键": "值",
            "キー": "値",
        }
        assert headers["x-scheduled-at"] == scheduled_at_of(p["message_id"])
    for m in by_entry["snapshot"]:
        p = m.properties
        body = json.loads(m.body)
        assert body == {
            "entry": "snapshot",
            "number": p["application_headers"]["x-message-number"],
            "id": p["message_id"],
            "at": p["application_headers"]["x-scheduled-at"],
        }
    numbers = [json.loads(m.body)["message_number"] for m in by_entry["publish-text"]] + [
        m.properties["application_headers"]["x-message-number"]
        for m in hearts + by_entry["snapshot"]
    ]
    assert len(set(numbers)) == len(numbers)

    # ... and the raising payload failed each of its ticks, with nothing published
    broken = snap.entries["broken"]
    assert (broken.published, broken.pending) == (0, 0) and broken.failed >= 8
    assert snap.totals.invariant_holds and snap.totals.pending == 0
    failures = [line for line in worker.log.splitlines() if "no snapshot today" in line]
    assert failures and all("payload snapshots:fail raised RuntimeError" in f for f in failures)
    assert "Traceback" not in worker.log
