"""Least privilege: a RabbitMQ user that may only write to its exchange (configure ``^$``,
write ``^message$``, read ``^$``), on a vhost where the topology exists already.

With ``DECLARE = "all"`` it is refused at start (it may not declare); with
``"passive"`` and ``"none"`` the real worker publishes as that user, and what RabbitMQ
received is counted against what was due; with ``"passive"``, a missing queue is named
at start in one line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.connection import Connection

from pubtasks.bench.services import rabbitmqctl
from pubtasks.bench.waiting import wait_for
from pubtasks.settings import shorthand
from pubtasks.stats import Stats
from pubtasks.topology import Topology
from tests.helpers import Worker, check, clock_of, finish, tally, write_config

pytestmark = [pytest.mark.integration]

#: The permissions the README gives (configure, write, read): for DECLARE "passive" and
#: "none", write on the exchange only; for "all", what declaring and binding take too.
WRITE_ONLY = ("^$", "^message$", "^$")
DECLARING = ("^(message|text)$", "^(message|text)$", "^message$")
INTERVAL = 0.2


@pytest.fixture
def writer(vhost: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A user of its own that may only write to the exchange ``message`` on ``vhost``
    (or, given ``DECLARING`` as the fixture's param, declare the example's topology)."""
    permissions = getattr(request, "param", WRITE_ONLY)
    name, password = f"pubtasks-writer-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, name, *permissions)
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


def declare_as_admin(amqp_url: str, with_queue: bool = True) -> None:
    """What the operator (guest here) declared beforehand: the example's topology."""
    exchanges, queues = shorthand()
    topology = Topology(exchanges, queues if with_queue else ())
    with Connection(amqp_url) as conn:
        for declaration in topology.declarations():
            declaration.declare(conn.default_channel)


def as_writer(env: dict[str, str], vhost: str, writer: tuple[str, str]) -> dict[str, str]:
    name, password = writer
    return {**env, "AMQP_URL": f"amqp://{name}:{password}@127.0.0.1:5672/{vhost}"}


def start_fails(worker: Worker) -> tuple[int, list[str]]:
    code, output = worker.run_to_exit(timeout=90)
    assert "Traceback" not in output, output
    return code, [line for line in output.splitlines() if line.startswith("pubtasks: error:")]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("mode", "writer"),
    [("passive", WRITE_ONLY), ("none", WRITE_ONLY), ("all", DECLARING)],
    indirect=["writer"],
)
def test_a_user_of_the_readme_permissions_publishes_every_due_tick(
    mode: str,
    tmp_path: Path,
    prefix: str,
    stats: Stats,
    amqp_url: str,
    vhost: str,
    writer: tuple[str, str],
    worker_env: dict[str, str],
) -> None:
    # Given the topology declared by an operator (not needed with "all"), and a worker
    # that connects as a user of the README's permissions for DECLARE = mode
    if mode != "all":
        declare_as_admin(amqp_url)
    write_config(tmp_path, prefix, f"DECLARE = {mode!r}\n")
    env = as_writer({**worker_env, "PUBLISH_INTERVAL": str(INTERVAL)}, vhost, writer)
    worker = Worker(tmp_path, env)
    try:
        # When it runs for 15 acked ticks
        worker.start()
        wait_for(lambda: stats.snapshot().totals.acked >= 15, 60, "15 acks", 0.1)
        assert worker.stop() == 0, worker.log[-3000:]
    finally:
        worker.stop()
    queued = finish(tmp_path, env, stats)
    # Then every due tick reached the queue (counted by the admin), none failed
    row = tally(
        f"write-only user, DECLARE={mode!r}", amqp_url, stats, clock_of(worker), None, "",
        queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)
    assert row.failed == 0 and row.delivered >= 15
    assert writer[1] not in worker.log


def test_a_write_only_user_is_refused_declaring_and_a_missing_queue_is_named(
    tmp_path: Path,
    prefix: str,
    amqp_url: str,
    vhost: str,
    writer: tuple[str, str],
    worker_env: dict[str, str],
) -> None:
    # Given an exchange an operator declared, without the queue "text"
    declare_as_admin(amqp_url, with_queue=False)
    env = as_writer(worker_env, vhost, writer)
    # When the write-only user starts a worker that declares (the default) ...
    (tmp_path / "all").mkdir()
    write_config(tmp_path / "all", prefix)
    code, errors = start_fails(Worker(tmp_path / "all", env))
    # Then it exits 2 at once, the line naming the exchange and RabbitMQ's refusal
    assert code == 2
    [line] = errors
    assert "cannot declare exchange 'message' (topic, durable)" in line
    assert "(403) ACCESS_REFUSED" in line
    # When it only checks (passive): the exchange is found, the missing queue is named
    (tmp_path / "passive").mkdir()
    write_config(tmp_path / "passive", prefix, 'DECLARE = "passive"\n')
    code, errors = start_fails(Worker(tmp_path / "passive", env))
    assert code == 2
    [line] = errors
    assert "cannot find queue 'text' (durable) (DECLARE='passive' declares nothing" in line
    assert "(404) NOT_FOUND" in line
    assert writer[1] not in line


def test_the_readme_gives_the_permissions_tested_here() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for permissions, modes in ((DECLARING, '"all"'), (WRITE_ONLY, '"passive" and "none"')):
        quoted = " ".join(f"'{p}'" for p in permissions)
        assert f"rabbitmqctl set_permissions -p VHOST USER {quoted}  # {modes}" in readme
