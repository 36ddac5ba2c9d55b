"""The account of a run: every tick the schedule made due, and where it went.

The fault suite (``tests/helpers.tally``) and ``scripts/chaos`` end the same way:
consume the queue, read Redis, and account for each tick. What is due does not
come from the system under test: it is each entry's schedule (its ``Grid``: the
points ``k * P`` of ``every(P)``, a crontab's instants) between the moments the
run itself started its first worker and stopped it (``Clock``). Each due tick's
messages (``message_id`` ``<entry>@<ms>``, ``.<i>`` with a batch) are then looked
for one by one:

- *delivered*: consumed from RabbitMQ;
- *failed*: counted failed by pubtasks, with its reason (the ``failed:<message_id>``
  markers);
- *skipped*: on purpose, with its reason (paused, ``catch_up``, outside the window),
  as the records of ``<prefix>skips:<entry>`` say;
- or *missing*: none of these. A run must have none.

Which grid points are due (``due_window``): those strictly after the start, from
``FIRST_TICK`` seconds after it (a worker has that long to start and fire its
first tick), up to ``LAST_TICK`` seconds before the stop (beat may be that late
when it is stopped); and, whatever those allowances, every point between the
first and the last point that has any of the three ends, so that a gap cannot
hide at an edge. The points left out at the two edges are reported apart (none
of them has an end, by construction). Messages that are no grid point of the run
(a tick fired by hand, a tick from before the start) are *extra*; a message
consumed more than once is a *duplicate* (at-least-once: same ``message_id``).
Neither cancels a missing tick.

Apart from the grid, the numbers beat allocated are checked too (each delivered
or failed: none lost, none under two ids), and what is still queued in Redis.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection

from pubtasks.ids import MANUAL, message_id, message_ids, scheduled_at_of
from pubtasks.message import NUMBER_HEADER, Tick
from pubtasks.schedule import US, Grid, to_us
from pubtasks.stats import Stats

#: A worker has this long from its start (by the run's clock) to fire its first tick.
FIRST_TICK = 15.0
#: Beat may be this late with its ticks when the run stops it: the last points before
#: the stop are due only if a later point was fired.
LAST_TICK = 3.0
#: At most this many ids are kept in a report (missing, extras...).
SHOWN = 20


@dataclass
class Raw:
    """One message taken off a queue, its body as it came."""

    body: bytes
    properties: dict[str, Any]
    routing_key: str = ""


def take(amqp_url: str, queue: str, missing_ok: bool = False) -> list[Raw]:
    """Take every message off ``queue`` (basic.get, auto-ack) as it is, in arrival order.

    ``missing_ok``: a queue that does not exist (nothing declared it) holds nothing."""
    got: list[Raw] = []
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        if missing_ok:
            try:
                channel.queue_declare(queue, passive=True)
            except conn.channel_errors:
                return got
        while True:
            msg = channel.basic_get(queue, no_ack=True)
            if msg is None:
                return got
            body = msg.body  # py-amqp decodes a body that names its content_encoding
            if isinstance(body, str):
                body = body.encode(msg.properties["content_encoding"])
            key = str(msg.delivery_info.get("routing_key", ""))
            got.append(Raw(bytes(body), dict(msg.properties), key))


def number_of(m: Raw) -> int:
    """A delivered message's number: in the default body, or in its header."""
    headers = m.properties.get("application_headers") or {}
    if NUMBER_HEADER in headers:
        return int(headers[NUMBER_HEADER])
    return int(json.loads(m.body)["message_number"])


def failed_markers(stats: Stats) -> dict[str, tuple[int, str]]:
    """Each message counted failed: message_id -> (number, reason)."""
    found = {}
    for key in stats.client.scan_iter(match=stats.keys.failed("*"), count=1000):
        number, _, reason = str(stats.client.get(key) or "0").partition(" ")
        found[key.removeprefix(stats.keys.failed(""))] = (int(number), reason)
    return found


def queued_ids(client: Any, prefix: str) -> set[str]:
    """Message ids of the ticks still in Celery's Redis queue or reserved (``unacked``)."""
    raw = client.lrange(f"{prefix}celery", 0, -1) + [
        json.loads(v)[0] for v in client.hvals(f"{prefix}unacked")
    ]
    ids: set[str] = set()
    for item in raw:
        message = json.loads(item) if isinstance(item, str | bytes) else item
        kwargs = json.loads(base64.b64decode(message["body"]))[1]
        for own in kwargs.get("ticks") or [kwargs]:  # a group's ticks, or a tick alone
            tick = Tick(own["entry"], own["scheduled_at"], 0, int(own.get("batch") or 1))
            ids.update(out.message_id for out in tick.messages())
    return ids


# -- what is due ----------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """Ticks skipped on purpose: the scheduled times of the first and the last
    (inclusive), how many grid points that is, and when it was recorded."""

    reason: str  # "paused", "catch_up", "window"...
    first: float
    last: float
    count: int
    at: float


def skips_key(prefix: str, entry: str) -> str:
    return f"{prefix}skips:{entry}"


def skips_of(client: Any, prefix: str, entry: str) -> list[Skip]:
    """The skip records of ``entry``: the JSON records of ``<prefix>skips:<entry>``."""
    found = []
    for raw in client.lrange(skips_key(prefix, entry), 0, -1):
        r = json.loads(raw)
        found.append(Skip(str(r["reason"]), r["first"], r["last"], int(r["count"]), r["at"]))
    return found


@dataclass(frozen=True)
class Clock:
    """The run's own clock (``time.time()``): when it started its first worker, and
    when it asked the first of them to stop at the end."""

    started: float
    stopped: float

    @classmethod
    def of(cls, started: Iterable[float | None], stopped: Iterable[float | None]) -> Clock:
        """From the workers' first starts and their last stops (None: never)."""
        starts = [t for t in started if t is not None]
        stops = [t for t in stopped if t is not None]
        if not starts or not stops:
            raise ValueError("the run never started or never stopped a worker")
        return cls(min(starts), min(stops))


@dataclass(frozen=True)
class Expected:
    """An entry the run configured: its schedule, and messages per tick (PUBLISH_BATCH)."""

    entry: str
    grid: Grid
    batch: int = 1


def grid_points(grid: Grid, after: float, until: float) -> list[float]:
    """The grid's points in ``(after, until]``."""
    points, end = [], to_us(until)
    t = grid.following_us(to_us(after))
    while t <= end:
        points.append(t / US)
        t = grid.following_us(t)
    return points


def ids_of(entry: str, at: float, batch: int) -> list[str]:
    """The message ids of the tick of ``entry`` at ``at``, as pubtasks names them."""
    return message_ids(message_id(entry, at), batch)


def ms(t: float) -> int:
    return round(t * 1000)


class Skipped:
    """Which scheduled times the skip records cover (by the millisecond, as ids are)."""

    def __init__(self, records: Sequence[Skip]) -> None:
        self.spans = sorted((ms(r.first), ms(r.last), r.reason) for r in records)
        self.starts = [s[0] for s in self.spans]

    def reason(self, at: float) -> str | None:
        t = ms(at)
        i = bisect.bisect_right(self.starts, t)
        for first, last, reason in reversed(self.spans[:i]):
            if first <= t <= last:
                return reason
        return None


@dataclass
class Match:
    """One entry's due ticks, matched one by one."""

    entry: str
    due: int = 0  # grid points due (ticks)
    due_messages: int = 0
    delivered: int = 0  # due messages consumed from RabbitMQ
    failed: Counter[str] = field(default_factory=Counter)  # due, not consumed: by reason
    failed_delivered: int = 0  # due messages counted failed and consumed all the same
    skipped: Counter[str] = field(default_factory=Counter)  # due, by reason
    missing: list[str] = field(default_factory=list)  # due, with none of the three
    edge_start: int = 0  # grid points left out at the start (none fired)
    edge_stop: int = 0  # grid points left out at the stop (none fired)
    first_due: float | None = None
    last_due: float | None = None
    extras: list[str] = field(default_factory=list)  # consumed, not a grid point of the run
    all_failed: Counter[str] = field(default_factory=Counter)  # every marker, by reason
    contradictions: list[str] = field(default_factory=list)  # skipped, yet delivered/failed
    skip_counts: list[str] = field(default_factory=list)  # records whose count is wrong


def due_window(clock: Clock, ended: Iterable[float]) -> tuple[float, float]:
    """The due span ``[lo, hi]`` of a run (see the module docstring): from ``FIRST_TICK``
    after the start to ``LAST_TICK`` before the stop, widened to the first and the last
    point that has an end (``ended``)."""
    lo, hi = clock.started + FIRST_TICK, clock.stopped - LAST_TICK
    for t in ended:
        lo, hi = min(lo, t), max(hi, t)
    return lo, hi


def match(
    expected: Expected,
    clock: Clock,
    consumed: Iterable[str],
    failed: Mapping[str, str],
    skips: Sequence[Skip],
) -> Match:
    """Match ``expected``'s due ticks one by one against the message ids ``consumed``
    from RabbitMQ, the failed markers (``failed``: message_id -> reason) and the skip
    records. Pure: the run's I/O is in ``account``."""
    entry, batch = expected.entry, expected.batch
    mine = f"{entry}@"
    got = {m for m in consumed if m.startswith(mine)}
    fails = {m: r for m, r in failed.items() if m.startswith(mine)}
    skipped = Skipped(skips)
    latest = max(
        [clock.stopped]
        + [r.last for r in skips]
        + [scheduled_at_of(m) for m in got | fails.keys() if MANUAL not in m]
    )
    points = grid_points(expected.grid, clock.started, latest)
    ended = [
        t
        for t in points
        if skipped.reason(t) is not None
        or any(m in got or m in fails for m in ids_of(entry, t, batch))
    ]
    lo, hi = due_window(clock, ended)
    result = Match(entry, all_failed=Counter(fails.values()))
    on_grid: set[str] = set()
    for t in points:
        ids = ids_of(entry, t, batch)
        on_grid.update(ids)
        if t < lo:
            result.edge_start += 1
            continue
        if t > hi:
            result.edge_stop += 1
            continue
        result.due += 1
        result.due_messages += len(ids)
        result.first_due = t if result.first_due is None else result.first_due
        result.last_due = t
        why = skipped.reason(t)
        for m in ids:
            if why is not None and (m in got or m in fails):
                result.contradictions.append(m)
            if m in got:
                result.delivered += 1
                result.failed_delivered += m in fails
            elif m in fails:
                result.failed[fails[m]] += 1
            elif why is not None:
                result.skipped[why] += 1
            else:
                result.missing.append(m)
    result.extras = sorted(got - on_grid)
    for r in skips:
        covered = len(grid_points(expected.grid, r.first - 1 / US, r.last))
        if covered != r.count:
            result.skip_counts.append(
                f"{r.reason} {r.first:.3f}..{r.last:.3f}: count {r.count}, grid {covered}"
            )
    return result


# -- the account ----------------------------------------------------------------------


@dataclass
class Ledger:
    """Where every due tick, and every number beat allocated, went."""

    matches: list[Match]
    numbers: int  # numbers beat allocated (its own count, checked against what arrived)
    received: int  # messages consumed, duplicates included
    distinct: int  # distinct message_ids consumed
    lost_numbers: list[int]  # allocated numbers neither delivered nor failed
    collisions: int  # numbers delivered under more than one message_id (must be 0)
    stranded: int  # ticks still queued or reserved in Redis
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)  # every marker
    ids: set[str] = field(default_factory=set)
    strangers: list[str] = field(default_factory=list)  # consumed, of no expected entry

    @property
    def duplicates(self) -> int:
        return self.received - self.distinct

    def total(self, name: str) -> int:
        return sum(int(getattr(m, name)) for m in self.matches)

    @property
    def due(self) -> int:
        return self.total("due")

    @property
    def due_messages(self) -> int:
        return self.total("due_messages")

    @property
    def delivered(self) -> int:
        return self.total("delivered")

    @property
    def missing(self) -> list[str]:
        return [m for x in self.matches for m in x.missing]

    @property
    def extras(self) -> list[str]:
        return [m for x in self.matches for m in x.extras] + self.strangers

    @property
    def failed_due(self) -> Counter[str]:
        return sum((m.failed for m in self.matches), Counter())

    @property
    def skipped(self) -> Counter[str]:
        return sum((m.skipped for m in self.matches), Counter())

    @property
    def reasons(self) -> Counter[str]:
        """Every message counted failed, by reason (due or not)."""
        return Counter(reason for _, reason in self.failed.values())

    @property
    def edges(self) -> tuple[int, int]:
        return self.total("edge_start"), self.total("edge_stop")


def account(
    received: list[Raw], stats: Stats, expected: Sequence[Expected], clock: Clock
) -> Ledger:
    """The ledger of ``received`` (everything consumed) for the entries ``expected``,
    over the run's ``clock``, with what Redis says was failed or skipped."""
    snap = stats.snapshot()
    failed = failed_markers(stats)
    ids = [str(m.properties["message_id"]) for m in received]
    unique = set(ids)
    reasons = {m: reason for m, (_, reason) in failed.items()}
    matches = [
        match(e, clock, unique, reasons, skips_of(stats.client, stats.keys.prefix, e.entry))
        for e in expected
    ]
    by_number: dict[int, set[str]] = {}
    for m in received:
        by_number.setdefault(number_of(m), set()).add(str(m.properties["message_id"]))
    numbers = by_number.keys() | {number for number, _ in failed.values()}
    names = {f"{e.entry}@" for e in expected}
    return Ledger(
        matches=matches,
        numbers=snap.last_message_number,
        received=len(ids),
        distinct=len(unique),
        lost_numbers=sorted(set(range(1, snap.last_message_number + 1)) - numbers),
        collisions=sum(1 for found in by_number.values() if len(found) > 1),
        stranded=len(queued_ids(stats.client, stats.keys.prefix)),
        failed=failed,
        ids=unique,
        strangers=sorted(m for m in unique if not any(m.startswith(n) for n in names)),
    )


def verdict(ledger: Ledger, failing: Sequence[str] = (), skipping: Sequence[str] = ()) -> list[str]:
    """What is wrong with a run (nothing: an empty list).

    ``failing``: what a failure's reason may contain in a scenario about failing
    (none by default: no tick may fail); ``skipping``: the skip reasons the scenario
    allows (none by default)."""
    wrong = []
    if ledger.matches and ledger.due == 0:
        wrong.append("no tick was due: the run was too short to check anything")
    if ledger.missing:
        wrong.append(
            f"{len(ledger.missing)} due message(s) neither delivered, failed nor skipped: "
            + ", ".join(ledger.missing[:SHOWN])
        )
    bad = {r: n for r, n in ledger.reasons.items() if not any(ok in r for ok in failing)}
    if bad:
        wrong.append(
            f"{sum(bad.values())} message(s) failed "
            + ("" if failing else "(none may) ")
            + "; ".join(f"{n} x {r}" for r, n in bad.items())
        )
    odd = {r: n for r, n in ledger.skipped.items() if r not in skipping}
    if odd:
        wrong.append("skipped: " + "; ".join(f"{n} x {r}" for r, n in odd.items()))
    for m in ledger.matches:
        if m.contradictions:
            wrong.append(f"{m.entry}: skipped yet published: {', '.join(m.contradictions[:SHOWN])}")
        if m.skip_counts:
            wrong.append(f"{m.entry}: skip records miscounted: {'; '.join(m.skip_counts)}")
    if ledger.lost_numbers:
        shown = ", ".join(map(str, ledger.lost_numbers[:SHOWN]))
        wrong.append(f"{len(ledger.lost_numbers)} number(s) neither delivered nor failed: {shown}")
    if ledger.collisions:
        wrong.append(f"{ledger.collisions} number(s) published under two message ids")
    if ledger.stranded:
        wrong.append(f"{ledger.stranded} tick(s) left queued or reserved in Redis")
    return wrong
