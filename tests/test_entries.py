"""Unit tests: schedule entries and the topology, checked at start with one line each."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from celery.schedules import crontab
from kombu import Exchange, Queue, binding

from pubtasks.defaults import CATCH_UP_WITHIN
from pubtasks.entries import CatchUp, catch_up_of, task_options
from pubtasks.errors import ConfigError
from pubtasks.message import BINARY, TEXT
from pubtasks.schedule import every
from pubtasks.settings import Settings

PUBLISH = "pubtasks.publish"


def load(schedule: Any, **conf: Any) -> Settings:
    return Settings.load({}, {"beat_schedule": schedule, **conf})


def entry(**kwargs: Any) -> dict[str, Any]:
    return {"e": {"task": PUBLISH, "schedule": every(), "kwargs": kwargs}}


def refused(schedule: Any, **conf: Any) -> str:
    with pytest.raises(ConfigError) as err:
        load(schedule, **conf)
    text = str(err.value)
    assert "\n" not in text
    return text


# -- what an entry can say ----------------------------------------------------------------


def test_an_entry_without_kwargs_publishes_the_default_message() -> None:
    [(name, recipe)] = load(entry()).recipes.items()
    assert name == "e"
    assert (recipe.exchange, recipe.routing_key, recipe.own_body) == (
        "message",
        "example.text",
        False,
    )


def test_an_entry_with_its_own_body_headers_and_properties() -> None:
    headers = {"مفتاح": " قيمة", "键": "值", "キー": "値", "nested": {"list": [1, "a", None]}}
    s = load(
        entry(
            exchange="heartbeat",
            routing_key="",
            body={"job": "rebuild-report"},
            headers=headers,
            properties={
                "priority": 9,
                "expiration": 60000,
                "type": "command",
                "correlation_id": "c-1",
                "reply_to": "replies",
                "delivery_mode": "transient",
            },
        ),
        EXCHANGES=[Exchange("heartbeat", "fanout")],
    )
    recipe = s.recipes["e"]
    assert recipe.exchange == "heartbeat"
    assert recipe.body is not None and json.loads(recipe.body.data) == {"job": "rebuild-report"}
    assert recipe.headers == headers
    assert recipe.properties == {
        "priority": 9,
        "expiration": "60000",
        "type": "command",
        "correlation_id": "c-1",
        "reply_to": "replies",
        "delivery_mode": 1,
    }


def test_text_and_bytes_bodies() -> None:
    s = load(
        {**entry(body="hello"), "b": {"task": PUBLISH, "schedule": 5, "kwargs": {"body": b"\x00"}}}
    )
    assert s.recipes["e"].body is not None and s.recipes["e"].body.content_type == TEXT
    assert s.recipes["b"].body is not None and s.recipes["b"].body.content_type == BINARY


def test_a_payload_is_imported_at_start() -> None:
    recipe = load(entry(payload="tests.payloads:snapshot")).recipes["e"]
    assert recipe.payload is not None and recipe.payload.__name__ == "snapshot"


def test_entries_of_other_registered_tasks_are_left_alone() -> None:
    s = Settings.load(
        {},
        {"beat_schedule": {"clean": {"task": "app.clean", "schedule": crontab(minute=0)}}},
        known_tasks=["app.clean"],
    )
    assert s.recipes == {}


@pytest.mark.parametrize(
    "schedule", [every(), every(0.5), crontab(hour=3, minute=0), timedelta(seconds=5), 5, 0.25]
)
def test_schedules_that_are_schedules(schedule: Any) -> None:
    assert set(load({"e": {"task": PUBLISH, "schedule": schedule}}).recipes) == {"e"}


@pytest.mark.parametrize(
    "options",
    [
        {"catch_up": "all"},
        {"catch_up": "latest", "catch_up_within": 86400},
        {"catch_up": "none", "priority": 3},
    ],
)
def test_a_missed_tick_policy_is_taken_and_kept_from_celery(options: dict[str, Any]) -> None:
    spec = {"e": {"task": PUBLISH, "schedule": crontab(minute=0), "options": options}}
    assert set(load(spec).recipes) == {"e"}
    policy = catch_up_of(options)
    assert policy.policy == options["catch_up"]
    assert policy.within == options.get("catch_up_within", CATCH_UP_WITHIN)
    assert "catch_up" not in task_options(options)
    assert "catch_up_within" not in task_options(options)
    assert catch_up_of(None) == CatchUp("all", CATCH_UP_WITHIN)


# -- what is refused, in one line naming the entry and the field ----------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (entry(exchange="nowhere"), "exchange 'nowhere' is not declared (declared: 'message')"),
        (entry(body={1, 2}), "body: json cannot encode a set"),
        (entry(body={"a": 1}, serializer="nope"), "body: serializer 'nope' is not available"),
        (entry(payload="tests.payloads:snapshot", serializer="nope"), "serializer 'nope'"),
        (entry(payload="no_such_module:f"), "payload: 'no_such_module:f' cannot be imported"),
        (entry(payload="tests.payloads:missing"), "'tests.payloads' has no 'missing'"),
        (entry(payload="tests.payloads:NOT_CALLABLE"), "is an int, not a function"),
        (entry(payload="tests.payloads.snapshot"), "not of the form 'package.module:function'"),
        (entry(properties={"priority": 256}), "'priority' 256 is out of range"),
        (entry(properties={"priority": -1}), "'priority' -1 is out of range"),
        (entry(properties={"expiration": "60s"}), "'expiration' '60s' is not a positive integer"),
        (entry(properties={"expiration": 0}), "'expiration' 0 is not a positive integer"),
        (
            entry(properties={"priorty": 1}),
            "'priorty' is not a property an entry can set; did you mean 'priority'?",
        ),
        (entry(properties={"message_id": "x"}), "'message_id' cannot be set: pubtasks sets it"),
        (entry(properties={"delivery_mode": 3}), "'delivery_mode' 3 must be 2"),
        (entry(body="a", payload="tests.payloads:snapshot"), "give 'body' or 'payload', not both"),
        ({"e": "every second"}, "is a str, not a dict"),
        ({"e": {"schedule": every()}}, "has no 'task'"),
        (
            {"e": {"task": "pubtasks.pubish", "schedule": every()}},
            "task 'pubtasks.pubish' is not a registered task; did you mean 'pubtasks.publish'?",
        ),
        ({"e": {"task": PUBLISH, "schedule": "soon"}}, "'schedule' 'soon' is not a schedule"),
        ({"e": {"task": PUBLISH, "schedule": every(-1)}}, "every(-1) is not a positive interval"),
        ({"e": {"task": PUBLISH, "schedule": 0}}, "'schedule' 0 is not a positive interval"),
        ({"e": {"task": PUBLISH}}, "has no 'schedule'"),
        (entry(routing_key=5), "'routing_key' 5 is an int; give a string"),
        (
            entry(routng_key="a"),
            "'routng_key' is not something an entry can say; did you mean 'routing_key'?",
        ),
        (entry(number=3), "kwargs: 'number' is set by pubtasks' beat"),
        (entry(headers={"x-message-number": 1}), "'x-message-number' is set by pubtasks"),
        (entry(headers={"a": {1, 2}}), "headers['a'] is a set, which an AMQP table cannot carry"),
        (entry(headers=["a"]), "'headers' must be a dict"),
        (entry(serializer="json"), "'serializer' applies to a 'body' or a 'payload'"),
        (
            {"e": {"task": PUBLISH, "schedule": 1, "options": {"expires": 5}}},
            "'expires' would let Celery drop a tick",
        ),
        ({"e": {"task": PUBLISH, "schedule": 1, "args": [1]}}, "'args' are not taken"),
        (
            {"e": {"task": PUBLISH, "schedule": every(), "options": {"catch_up": "some"}}},
            "options: 'catch_up' is 'some'; give 'all'",
        ),
        (
            {"e": {"task": PUBLISH, "schedule": every(), "options": {"catch_up_within": 0}}},
            "'catch_up_within' 0 is not a positive number of seconds",
        ),
        (
            {"e": {"task": PUBLISH, "schedule": 5, "options": {"catch_up": "none"}}},
            "'catch_up' applies to every() and crontab() entries",
        ),
        (
            {"e": {"task": PUBLISH, "schedule": every(), "options": {"jitter": 1.0}}},
            "'jitter' 1 s is not shorter than the 1 s between two of its ticks",
        ),
        (
            {"e": {"task": PUBLISH, "schedule": every(), "options": {"max_runs": "3"}}},
            "'max_runs' '3' is not a positive integer",
        ),
        (
            {"e": {"task": PUBLISH, "schedule": every(), "options": {"end": "2026-01-01"}}},
            "'end': 2026-01-01T00:00:00 has no time zone; add its offset",
        ),
        (
            {"e": {"task": PUBLISH, "schedule": every(), "options": {"overlap": "wait"}}},
            "'overlap' is 'wait'; give 'allow'",
        ),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_entry_and_the_field(
    schedule: dict[str, Any], expected: str
) -> None:
    text = refused(schedule)
    assert text.startswith("beat_schedule entry 'e': ")
    assert expected in text


def test_a_schedule_that_is_not_a_dict_is_refused() -> None:
    assert refused(["e"]).startswith("beat_schedule must be a dict of entries")


# -- the topology ---------------------------------------------------------------------------


def test_queues_and_exchanges_as_kombu_objects() -> None:
    jobs = Exchange("jobs", "direct")
    s = load(
        entry(exchange="jobs", routing_key="nightly"),
        QUEUES=[
            Queue(
                "nightly", jobs, routing_key="nightly", queue_arguments={"x-queue-type": "quorum"}
            ),
            Queue("audit", [binding(jobs, "nightly"), binding(Exchange("events", "topic"), "#")]),
        ],
        EXCHANGES=[Exchange("heartbeat", "fanout")],
    )
    assert [q.name for q in s.queues] == ["nightly", "audit"]
    assert s.context.exchanges == {"jobs", "events", "heartbeat"}
    assert s.recipes["e"].exchange == "jobs"


def test_the_default_exchange_and_amq_exchanges_need_no_declaring() -> None:
    s = load(
        {
            **entry(exchange=""),
            "f": {"task": PUBLISH, "schedule": 1, "kwargs": {"exchange": "amq.fanout"}},
        }
    )
    assert s.recipes["e"].exchange == ""
    assert s.recipes["f"].exchange == "amq.fanout"


def test_with_queues_the_default_exchange_must_be_declared_for_entries_that_use_it() -> None:
    text = refused(entry(), QUEUES=[Queue("q", Exchange("jobs"), "k")])
    assert "exchange 'message' is not declared (declared: 'jobs')" in text


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ({"QUEUES": [Queue("q")], "QUEUE": "text"}, "QUEUE in celeryconfig.py are shorthand"),
        ({"QUEUES": Queue("q")}, "QUEUES in celeryconfig.py is a Queue; give a list"),
        ({"QUEUES": ["q"]}, "QUEUES[0] is a str; give a kombu Queue"),
        ({"QUEUES": [Queue("q"), Queue("q")]}, "QUEUES[1]: queue 'q' is given twice"),
        ({"EXCHANGES": [Exchange("x", "fancy")]}, "EXCHANGES[0]: exchange 'x' has type 'fancy'"),
        ({"EXCHANGES": [Exchange("amq.topic", "topic")]}, "'amq.topic' is RabbitMQ's own"),
        (
            {"EXCHANGES": [Exchange("message", "fanout")]},
            "exchange 'message' is given twice, differently",
        ),
    ],
)
def test_a_bad_topology_names_the_setting(conf: dict[str, Any], expected: str) -> None:
    assert expected in refused({}, **conf)


def test_a_plugin_exchange_type_is_passed_on() -> None:
    delayed = Exchange("later", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    s = load(entry(exchange="later"), EXCHANGES=[delayed])
    assert s.recipes["e"].exchange == "later"
