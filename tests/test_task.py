"""The publish task run by Celery's own test worker (celery.contrib.pytest), real services."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from pubtasks import tasks
from pubtasks.bench.waiting import wait_for
from pubtasks.celery import app as pubtasks_app
from pubtasks.stats import Stats
from pubtasks.supervision import Supervision
from tests.helpers import celery_isolation, drain

pytestmark = pytest.mark.integration


@pytest.fixture
def celery_app(
    monkeypatch: pytest.MonkeyPatch, amqp_url: str, redis_url: str, prefix: str
) -> Iterator[Celery]:
    """The pubtasks app itself, pointed at this test's vhost, Redis prefix and Celery keys."""
    app = pubtasks_app
    monkeypatch.setenv("AMQP_URL", amqp_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    overrides: dict[str, Any] = {
        "broker_url": redis_url,
        **celery_isolation(prefix),
        "STATS_PREFIX": prefix,
        "CONFIRM_TIMEOUT": 2.0,
    }
    saved = {key: app.conf.get(key) for key in overrides}
    app.conf.update(overrides)
    forget_transport(app)
    app.use_settings(None)  # loaded again, from this test's environment and overrides
    # Without pubtasks' supervisor: its heartbeat lasts as long as the process (by design,
    # see supervision.py), and this worker's process is pytest's, which outlives the
    # test and its prefix. The real worker's tests cover the supervisor.
    app.steps["worker"].discard(Supervision)
    try:
        yield app
    finally:
        app.steps["worker"].add(Supervision)
        tasks.publish.close_publishers()
        app.use_settings(None)
        app.conf.update(saved)
        forget_transport(app)


def forget_transport(app: Celery) -> None:
    """Drop what Celery built from the previous test's settings: pools, queues, routes."""
    app._after_fork()
    app.__dict__.pop("amqp", None)


@pytest.fixture
def celery_worker_parameters() -> dict[str, Any]:
    return {"perform_ping_check": False, "shutdown_timeout": 10.0}


def test_the_task_publishes_a_tick_with_the_number_beat_gave_it(
    celery_worker: Any, stats: Stats, amqp_url: str
) -> None:
    scheduled_at = round(time.time() - 0.5, 3)
    tasks.publish.apply_async(
        kwargs={"entry": "manual", "scheduled_at": scheduled_at, "number": 41}
    )
    wait_for(lambda: stats.snapshot().totals.acked == 1, 20, "the tick to be acked")
    [got] = drain(amqp_url, "text")
    assert got.body["message_number"] == 41
    assert got.body["entry"] == "manual"
    assert got.properties["message_id"] == f"manual@{round(scheduled_at * 1000)}"


def test_a_call_without_beat_gets_a_number_and_a_time(
    celery_worker: Any, stats: Stats, amqp_url: str
) -> None:
    tasks.publish.delay()
    wait_for(lambda: stats.snapshot().totals.acked == 1, 20, "the tick to be acked")
    [got] = drain(amqp_url, "text")
    assert got.body["message_number"] == stats.snapshot().last_message_number == 1
    assert got.body["entry"] == "publish-text"


def test_a_tick_past_its_deadline_fails_with_its_reason(
    celery_worker: Any, stats: Stats, amqp_url: str
) -> None:
    # Given a tick that waited in the queue longer than TICK_DEADLINE (600 s)
    tasks.publish.apply_async(kwargs={"scheduled_at": time.time() - 601, "number": 1})
    # Then it is not published but counted as failed, with the reason
    snap = wait_for(
        lambda: (s := stats.snapshot()).totals.failed == 1 and s, 20, "the tick to fail"
    )
    assert "TICK_DEADLINE=600 s passed" in snap.last_error["reason"]
    assert drain(amqp_url, "text") == []
