"""Shared helpers for the integration tests: waiting, draining a queue, a real worker."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kombu.connection import Connection

from pubtasks.bench.services import rabbitmqctl
from pubtasks.bench.waiting import wait_for
from pubtasks.bench.worker import Worker, celery_isolation
from pubtasks.bench.worker import write_config as write_worker_config
from pubtasks.defaults import DEFAULT_ENTRY
from pubtasks.schedule import every
from tests.support.chaos import commit
from tests.support.ledger import Clock, Expected, Ledger, Raw, account, queued_ids, take, verdict

__all__ = ["Raw", "Worker", "celery_isolation", "queued_ids", "rabbitmqctl", "take"]

RABBIT = os.environ.get("PUBTASKS_TEST_RABBIT", "amqp://guest:guest@127.0.0.1:5672")
REDIS = os.environ.get("PUBTASKS_TEST_REDIS", "redis://127.0.0.1:6379")
#: The Redis database the tests use; every key they write is under their own prefix too.
REDIS_DB = int(os.environ.get("PUBTASKS_TEST_REDIS_DB", "14"))

#: The test worker's configuration, before what a test adds and the isolation settings.
CONFIG = """
from pubtasks.schedule import every

beat_schedule = {"publish-text": {"task": "pubtasks.publish", "schedule": every()}}
CONFIRM_TIMEOUT = 2.0
"""


@dataclass
class Received:
    """One message taken off a queue."""

    body: dict[str, Any]
    properties: dict[str, Any]


def drain(amqp_url: str, queue: str) -> list[Received]:
    """Take every message off ``queue`` (basic.get, auto-ack) in arrival order, as JSON."""
    return [Received(json.loads(m.body), m.properties) for m in take(amqp_url, queue)]


def queue_depth(amqp_url: str, queue: str) -> int:
    with Connection(amqp_url) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)


def write_config(directory: Path, prefix: str, extra: str = "") -> None:
    """A celeryconfig.py for a test worker: its own stats prefix and Celery keys."""
    write_worker_config(directory, prefix, CONFIG + textwrap.dedent(extra))


def connections(vhost: str) -> list[str]:
    """The AMQP connections on ``vhost`` that RabbitMQ has not closed (closed ones linger
    in the list until their client reads the close)."""
    out = rabbitmqctl("list_connections", "--no-table-headers", "vhost", "name", "state")
    rows = [line.split("\t") for line in out.splitlines()]
    return [row[1] for row in rows if len(row) == 3 and row[0] == vhost and row[2] != "closed"]


def close_connections(vhost: str) -> int:
    """Have RabbitMQ close every connection on ``vhost``; wait until those are closed.

    Returns how many there were. New connections (a publisher reconnecting) may follow.
    """
    before = set(connections(vhost))
    rabbitmqctl("close_all_connections", "-p", vhost, "pubtasks test: forced close")
    wait_for(lambda: not before & set(connections(vhost)), 10, f"{vhost} to close them", 0.2)
    return len(before)


@dataclass
class Row:
    """One scenario's figures, as the reliability table shows them: each measured."""

    scenario: str
    due: int  # ticks due by the entries' schedules and the run's own clock
    delivered: int  # due messages consumed from RabbitMQ
    failed: int  # messages counted failed (every failed marker)
    reasons: dict[str, int]  # ... by reason
    skipped: dict[str, int]  # due messages skipped on purpose, by reason
    missing: int  # due messages neither delivered, failed nor skipped
    edges: tuple[int, int]  # grid points left out at the start and at the stop
    extras: int  # consumed messages that are no due grid point (by hand, off the grid)
    duplicates: int  # consumed more than once (same message_id)
    numbers: int  # numbers beat allocated (its own count)
    lost_numbers: int  # ... neither delivered nor failed
    stranded: int  # ticks left queued or reserved in Redis
    invariant: bool | None
    recovery_s: float | None
    notes: str = ""
    received: int = 0
    unconfirmed: int = 0
    queued: int = 0
    due_messages: int = 0
    wrong: list[str] = field(default_factory=list)
    ids: set[str] | None = None


def backlog(stats: Any) -> int:
    """Ticks still in Celery's Redis queue or reserved (``unacked``) under the test's prefix."""
    prefix = stats.keys.prefix
    return int(stats.client.llen(f"{prefix}celery")) + int(stats.client.hlen(f"{prefix}unacked"))


def finish(
    cwd: Path, env: dict[str, str], stats: Any, timeout: float = 120, resend: bool = False
) -> int:
    """End a scenario as the next start would: a worker without beat publishes what is
    still queued in Redis (or reserved by a worker that is gone); return once nothing
    is queued, reserved or pending. Returns how many ticks were waiting.

    With ``resend``, also once no tick beat sent is still unconfirmed (``ledger``): a
    failover that lost a tick's task message left its record, and the worker's
    supervisor sends it again ``timing.RESEND_AFTER`` after it was sent, which a short
    scenario ends before.

    A worker can be stopped while nothing looks queued and yet hold a tick: the Redis
    transport pops a task before it records it as reserved, and a warm shutdown then
    puts it back. So the check is made again after each stop, and another worker
    publishes what came back."""
    waiting = len(queued_ids(stats.client, stats.keys.prefix))
    deadline = time.monotonic() + timeout
    (cwd / "finish").mkdir(exist_ok=True)
    (cwd / "finish" / "celeryconfig.py").write_text((cwd / "celeryconfig.py").read_text())

    def unsent() -> int:
        return len(stats.ledger.overdue(time.time())) if resend else 0

    while backlog(stats) or stats.snapshot().totals.pending or unsent():
        left = deadline - time.monotonic()
        assert left > 0, f"the next workers did not publish the {waiting} queued ticks"
        with Worker(cwd / "finish", dict(env), beat=False, name="finish") as w:
            wait_for(
                lambda: (
                    backlog(stats) == 0 and stats.snapshot().totals.pending == 0 and unsent() == 0
                ),
                left,
                f"the next worker to publish {waiting} queued ticks (and those lost)",
                0.2,
            )
            assert w.stop() == 0, w.log[-3000:]
    return waiting


def clock_of(*workers: Worker) -> Clock:
    """The run's own clock: the first start of any of ``workers``, and the first of their
    last stops (``Worker.stop``)."""
    return Clock.of([w.first_start for w in workers], [w.last_stop for w in workers])


def tally(
    scenario: str,
    amqp_url: str,
    stats: Any,
    clock: Clock,
    recovery_s: float | None,
    notes: str = "",
    queued: int = 0,
    *,
    interval: float,
    entry: str = DEFAULT_ENTRY,
    batch: int = 1,
    failing: tuple[str, ...] = (),
    skipping: tuple[str, ...] = (),
    received: list[Raw] | None = None,
) -> Row:
    """Consume queue ``text`` (or take ``received``, consumed already) and read Redis:
    match every tick that ``entry``'s grid of
    ``interval`` made due over the run's ``clock`` (``ledger.account``), and say what
    is wrong (``Row.wrong``), ``failing`` and ``skipping`` being the failure and skip
    reasons the scenario allows. The scenario must have ended with ``finish()``,
    which publishes what was still queued; ``queued`` is how many that was."""
    expected = [Expected(entry, every(interval), batch)]
    got = take(amqp_url, "text") if received is None else received
    ledger = account(got, stats, expected, clock)
    return row_of(scenario, ledger, stats, recovery_s, notes, queued, failing, skipping)


def row_of(
    scenario: str,
    ledger: Ledger,
    stats: Any,
    recovery_s: float | None,
    notes: str = "",
    queued: int = 0,
    failing: tuple[str, ...] = (),
    skipping: tuple[str, ...] = (),
) -> Row:
    """The reliability table's row for ``ledger`` and the counters in Redis now."""
    t = stats.snapshot().totals
    invariant = t.invariant_holds and t.pending == 0
    wrong = verdict(ledger, failing, skipping)
    if not invariant:
        wrong.append("the counters' invariant does not hold (or a publish is still pending)")
    return Row(
        scenario=scenario,
        due=ledger.due,
        delivered=ledger.delivered,
        failed=len(ledger.failed),
        reasons=dict(ledger.reasons),
        skipped=dict(ledger.skipped),
        missing=len(ledger.missing),
        edges=ledger.edges,
        extras=len(ledger.extras),
        duplicates=ledger.duplicates,
        numbers=ledger.numbers,
        lost_numbers=len(ledger.lost_numbers),
        stranded=ledger.stranded,
        invariant=invariant,
        recovery_s=recovery_s,
        notes=notes,
        received=ledger.received,
        unconfirmed=t.unconfirmed,
        queued=queued,
        due_messages=ledger.due_messages,
        wrong=wrong,
        ids=ledger.ids,
    )


def check(row: Row) -> None:
    """Record the row, then fail the test with everything wrong with it."""
    record(row)
    assert not row.wrong, f"{row.scenario}: " + "; ".join(row.wrong)


def caught_up(stats: Any, entry: str = DEFAULT_ENTRY) -> bool:
    """Beat has sent every tick of ``entry`` due until a second ago (its last sent,
    ``beat:last``). A worker stopped while its beat catches up leaves the rest to the
    next start; a scenario that ends with that stop waits for this first."""
    last = stats.client.get(stats.keys.beat_last(entry))
    return last is not None and float(last) >= time.time() - 1.0


def group_of(pid: int) -> int | None:
    """The process group of ``pid`` (a worker's session: its pool processes and beat)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def holder_group(stats: Any) -> int | None:
    """The process group (worker) whose beat holds the beat lock."""
    value = stats.client.get(stats.keys.beat_lock)
    return None if value is None else group_of(int(value.split(".")[-2]))


def beat_pid(worker: Worker) -> int:
    """The pid of the worker's embedded beat, as its latest start logged it."""
    found = re.findall(r"watching the embedded beat \(pid (\d+)\)", worker.current_log)
    assert found, "the worker has not logged its beat's pid"
    return int(found[-1])


def record(row: Row) -> None:
    """Append the row to $PUBTASKS_RELIABILITY_OUT (JSON lines), when it is set."""
    out = os.environ.get("PUBTASKS_RELIABILITY_OUT")
    if not out:
        return
    data = {k: v for k, v in row.__dict__.items() if k != "ids"}
    data["commit"] = commit()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(data) + "\n")


def record_replication(measure: dict[str, Any]) -> None:
    """Append a replication measure to $PUBTASKS_RELIABILITY_OUT, when it is set."""
    out = os.environ.get("PUBTASKS_RELIABILITY_OUT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(json.dumps(measure) + "\n")
