"""Integration tests: where the resend of lost ticks looks for a tick's task message,
on the real Redis (Celery's transport)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from pubtasks.ids import message_id
from pubtasks.supervision import tick_queues
from pubtasks.transport import queued_ticks

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str, prefix: str) -> Iterator[Celery]:
    app = Celery("resend", broker=redis_url, set_as_current=False)
    try:
        yield app
    finally:
        with app.connection_for_write() as conn:  # the test's queues
            client = conn.default_channel.client
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
        app.close()


def test_a_tick_waiting_in_its_entrys_own_queue_is_found_not_sent_twice(
    app: Celery, prefix: str
) -> None:
    # Given an entry whose ticks go to a queue of its own, one with a priority, and one
    # entry on Celery's default queue, each with a tick waiting
    default, own = f"{prefix}celery", f"{prefix}own"
    schedule = {
        "mine": {"task": "pubtasks.publish", "options": {"queue": own, "priority": 6}},
        "other": {"task": "pubtasks.publish"},
    }
    ticks = {"mine": 10.0, "other": 11.0}
    for entry, at in ticks.items():
        queue = own if entry == "mine" else default
        kwargs = {"entry": entry, "scheduled_at": at, "number": 1, "batch": 1}
        options = {"priority": 6} if entry == "mine" else {}
        app.send_task("pubtasks.publish", kwargs=kwargs, queue=queue, **options)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        # When the supervisor looks for them, in the queues the schedule names
        queues = tick_queues(default, schedule)
        found = queued_ticks(channel, queues)
        # Then both are present: neither is sent again as lost
        assert queues == {default, own}
        assert {message_id(e, at) for e, at in ticks.items()} <= found
        # (Looking in the default queue alone, as before, missed the entry's own)
        assert message_id("mine", 10.0) not in queued_ticks(channel, {default})


def test_each_tick_of_a_group_waiting_in_the_queue_is_found(app: Celery, prefix: str) -> None:
    # Given a group task (a burst's ticks in one message) waiting in Celery's queue
    default = f"{prefix}celery"
    ticks = [
        {"entry": f"e{i}", "scheduled_at": 20.0, "number": i + 1, "batch": 1} for i in range(3)
    ]
    app.send_task("pubtasks.publish_group", kwargs={"ticks": ticks}, queue=default)
    with app.connection_for_write() as conn:
        # When the supervisor looks for ticks whose task message was lost
        found = queued_ticks(conn.default_channel, {default})
    # Then each of the group's ticks is there: none is sent again
    assert {message_id(f"e{i}", 20.0) for i in range(3)} <= found
