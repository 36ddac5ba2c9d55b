"""End to end: what cannot work stops the worker at once, with one clear line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange

from pubtasks.stats import Stats
from pubtasks.urls import mask_url
from tests.helpers import Worker, check, row_of, write_config
from tests.support.ledger import Clock, account, take

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

SECRET = "s3cretPW"


@dataclass
class Run:
    """Where a start that must fail is measured: the test's vhost and Redis prefix."""

    amqp_url: str
    stats: Stats


@pytest.fixture
def run(amqp_url: str, stats: Stats) -> Run:
    return Run(amqp_url, stats)


def run_until_exit(worker: Worker, run: Run, case: str) -> tuple[int, list[str]]:
    started = time.time()
    code, output = worker.run_to_exit(timeout=90)
    errors = [line for line in output.splitlines() if line.startswith("pubtasks: error:")]
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    assert len(errors) == 1, output
    report(case, code, errors[0], run, Clock(started, time.time()))
    return code, errors


def report(case: str, code: int, line: str, run: Run, clock: Clock) -> None:
    """A row for the reliability table, measured: what reached RabbitMQ (queue ``text``,
    if anything declared it), what Redis counted (numbers, failures, counters). Nothing
    is due, since the worker refused to start: all of it must be nothing."""
    ledger = account(take(run.amqp_url, "text", missing_ok=True), run.stats, [], clock)
    row = row_of(
        f"fatal configuration at start: {case}", ledger, run.stats, None,
        f"exit {code} after {clock.stopped - clock.started:.1f} s, no traceback, no password, "
        f"one line: {line.removeprefix('pubtasks: error: ')}",
    )  # fmt: skip
    check(row)
    assert (row.received, row.failed, row.numbers) == (0, 0, 0), row


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PUBLISH_INTERVAL": "soon"}, "PUBLISH_INTERVAL='soon' is not a number"),
        ({"PUBLISH_INTERVAL": "-2"}, "PUBLISH_INTERVAL='-2' must be a positive number"),
        ({"AMQP_URL": f"http://guest:{SECRET}@127.0.0.1//"}, "AMQP_URL=http://guest:**@"),
        ({"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:notaport/0"}, "REDIS_URL=redis://:**@"),
    ],
)
def test_bad_settings_exit_non_zero_naming_the_setting(
    worker: Worker, run: Run, env: dict[str, str], expected: str
) -> None:
    worker.env.update(env)
    [(name, value)] = env.items()
    code, [line] = run_until_exit(worker, run, f"{name}={mask_url(value)!r}")
    assert code != 0
    assert expected in line


def test_wrong_credentials_stop_at_once(worker: Worker, run: Run, amqp_url: str) -> None:
    worker.env["AMQP_URL"] = amqp_url.replace("guest:guest", f"guest:{SECRET}")
    code, [line] = run_until_exit(worker, run, "wrong RabbitMQ password")
    assert code != 0
    assert "refused the login: (403) ACCESS_REFUSED" in line
    assert "check the user and password in AMQP_URL" in line


def test_unreachable_rabbitmq_is_retried_one_line_per_attempt_then_exits(
    worker_dir: Path, worker: Worker, run: Run, prefix: str
) -> None:
    write_config(worker_dir, prefix, "STARTUP_RETRIES = 3\n")
    worker.env["AMQP_URL"] = f"amqp://guest:{SECRET}@127.0.0.1:1//"
    started = time.time()
    code, output = worker.run_to_exit(timeout=90)
    report("RabbitMQ unreachable", code, output.splitlines()[-1], run, Clock(started, time.time()))
    # Three attempts in all: a line for each of the first two, then the one error line
    attempts = [line for line in output.splitlines() if "retrying in" in line]
    assert [a.rsplit("(", 1)[1] for a in attempts] == [f"attempt {n}/3)" for n in (1, 2)]
    assert code != 0
    assert output.splitlines()[-1].startswith(
        "pubtasks: error: RabbitMQ at amqp://guest:**@127.0.0.1:1// is unreachable"
    )
    assert SECRET not in output and "Traceback" not in output


def test_unreachable_redis_is_retried_then_exits(
    worker_dir: Path, worker: Worker, run: Run, prefix: str
) -> None:
    write_config(worker_dir, prefix, "STARTUP_RETRIES = 2\n")
    worker.env["REDIS_URL"] = f"redis://:{SECRET}@127.0.0.1:1/0"
    started = time.time()
    code, output = worker.run_to_exit(timeout=120)
    report("Redis unreachable", code, output.splitlines()[-1], run, Clock(started, time.time()))
    assert code != 0
    attempts = [line for line in output.splitlines() if "retrying in" in line]
    assert [a.rsplit("(", 1)[1] for a in attempts] == ["attempt 1/2)"]
    assert output.splitlines()[-1].startswith(
        "pubtasks: error: Redis at redis://:**@127.0.0.1:1/0 failed"
    )
    assert SECRET not in output and "Traceback" not in output


def test_a_conflicting_exchange_at_start_names_it_and_quotes_rabbitmq(
    worker: Worker, run: Run, amqp_url: str
) -> None:
    with Connection(amqp_url) as conn:
        Exchange("message", "direct", durable=True)(conn.default_channel).declare()
    code, [line] = run_until_exit(worker, run, "exchange exists as direct (406)")
    assert code != 0
    assert "cannot declare exchange 'message' (topic, durable)" in line
    assert "(406) PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'message'" in line


@pytest.mark.parametrize(
    ("case", "entry", "expected"),
    [
        (
            "misspelt task",
            "{'task': 'pubtasks.pubish', 'schedule': every()}",
            "task 'pubtasks.pubish' is not a registered task; did you mean 'pubtasks.publish'?",
        ),
        (
            "schedule 'soon'",
            "{'task': 'pubtasks.publish', 'schedule': 'soon'}",
            "'schedule' 'soon' is not a schedule",
        ),
        (
            "every(-1)",
            "{'task': 'pubtasks.publish', 'schedule': every(-1)}",
            "every(-1) is not a positive interval",
        ),
        (
            "routing_key 5",
            "{'task': 'pubtasks.publish', 'schedule': every(), 'kwargs': {'routing_key': 5}}",
            "'routing_key' 5 is an int; give a string",
        ),
        (
            "undeclared exchange",
            "{'task': 'pubtasks.publish', 'schedule': every(), 'kwargs': {'exchange': 'nope'}}",
            "exchange 'nope' is not declared",
        ),
        (
            "payload not importable",
            "{'task': 'pubtasks.publish', 'schedule': every(), 'kwargs': {'payload': 'nomod:f'}}",
            "payload: 'nomod:f' cannot be imported",
        ),
    ],
)
def test_a_bad_schedule_entry_stops_the_worker_with_one_line(
    worker: Worker, run: Run, worker_dir: Path, prefix: str, case: str, entry: str, expected: str
) -> None:
    write_config(worker_dir, prefix, f"beat_schedule = {{'bad': {entry}}}\n")
    code, [line] = run_until_exit(worker, run, f"beat_schedule entry: {case}")
    assert code != 0
    assert line.startswith("pubtasks: error: beat_schedule entry 'bad': "), line
    assert expected in line
