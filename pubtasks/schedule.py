"""Schedules of exact ticks for Celery beat, and what to do about the ticks missed.

Celery's ``timedelta`` schedule runs "interval after the last run", so every
late wake-up of beat pushes all later ticks back (the pika example drifts the
same way: it schedules the next publish after the current one). A ``Grid``
schedule instead has a fixed set of ticks, each an exact instant, whenever beat
actually wakes: ``every`` puts tick k at ``k * interval`` seconds since the epoch,
and ``cron.Cron`` at each matching local time of a crontab. A tick's scheduled
time is that instant.

The maths is pure and works in integer microseconds, so no float error
accumulates: ``plan_ticks()`` decides, ``Grid`` adapts it to Celery's schedule
API, and ``resume()`` applies an entry's missed-tick policy (``catch_up``) when a
beat takes the beat lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, schedstate

from pubtasks.defaults import CATCH_UP_WITHIN

US = 1_000_000
#: Beat may wake this early (timer granularity) and still fire the tick.
EARLY_US = 200
#: What an entry's ``catch_up`` may say (the first is the default).
POLICIES = ("all", "latest", "none")
#: Why ticks of the schedule were skipped, not fired (``Run.reason``): the entry was
#: paused; its ``catch_up`` policy did not fire them; they were more than
#: ``catch_up_within`` late; its previous tick was still unsettled (``overlap: skip``).
REASONS = ("paused", "catch_up", "window", "overlap")
#: A crontab's skipped ticks are counted one by one up to this many (about a second);
#: an ``every`` grid's are counted exactly, by arithmetic.
COUNT_LIMIT = 100_000
#: The "tick" after a schedule's last one (``once``, an entry's ``end``): no tick, ever
#: (about 146,000 years on; a datetime cannot hold it: ``has_next`` says).
NEVER_US = 2**62


def to_us(seconds: float) -> int:
    return round(seconds * US)


def has_next(t_us: int) -> bool:
    """Is ``t_us``, a schedule's following tick, a tick at all (not ``NEVER_US``)?"""
    return t_us < NEVER_US


@dataclass(frozen=True)
class Plan:
    """What beat should do now: fire ``tick_at`` (when due), then wait ``wait`` seconds."""

    due: bool
    tick_at: float | None
    wait: float


def plan_ticks(last_us: int, now_us: int, within_us: int, following: Callable[[int], int]) -> Plan:
    """Decide the next tick after the one fired at (or the start recorded as) ``last_us``.

    ``following(t)`` is the schedule's first tick strictly after ``t``. Ticks missed
    while beat was busy or stalled are fired one after another, each with its own
    time, so none is lost; but a tick more than ``within_us`` late is not fired:
    beat goes on from the oldest tick within that window (or waits for the next).
    """
    tick = following(last_us)
    if tick > now_us + EARLY_US:
        return Plan(False, None, (tick - now_us) / US)
    if now_us - tick > within_us:
        tick = following(now_us - within_us - 1)  # the oldest tick still within the window
        if tick > now_us + EARLY_US:
            return Plan(False, None, (tick - now_us) / US)
    after = following(tick)
    wait = 0 if after <= now_us + EARLY_US else after - now_us
    return Plan(True, tick / US, wait / US)


def plan(
    last_tick: float, now: float, interval: float, catch_up_within: float = CATCH_UP_WITHIN
) -> Plan:
    """``plan_ticks`` for the grid of ``interval`` seconds."""
    iv = to_us(interval)
    if iv <= 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    return plan_ticks(
        to_us(last_tick), to_us(now), to_us(catch_up_within), lambda t: (t // iv + 1) * iv
    )


class Grid(BaseSchedule):  # type: ignore[misc]
    """A schedule whose ticks are exact instants: ``following`` says which.

    ``within`` is the entry's catch-up window (``catch_up_within``): a tick fired
    more than that late is skipped, whatever the reason beat was late.
    """

    within: float = CATCH_UP_WITHIN

    def following_us(self, t_us: int) -> int:
        """The first tick strictly after ``t_us`` (microseconds since the epoch)."""
        raise NotImplementedError

    def following(self, t: float) -> float:
        return self.following_us(to_us(t)) / US

    def late(self, tick: float, fired_at: float) -> bool:
        """Is tick ``tick`` fired more than one interval late, after the next tick's time?"""
        return fired_at > self.following(tick)

    def latest(self, after: float, until: float, early_us: int = EARLY_US) -> float | None:
        """The newest tick in ``(after, until]`` (``until`` plus ``early_us``, as beat may
        wake that early); None if there is none.

        Looked for in the last hour first, then in spans four times longer, so that a
        last tick a year ago costs a frequent schedule one hour's ticks, not a year's."""
        span = 3600.0
        while True:
            start = max(after, until - span)
            found, tick = None, self.following_us(to_us(start))
            end = to_us(until) + early_us
            while tick <= end:
                found, tick = tick, self.following_us(tick)
            if found is not None or start <= after:
                return None if found is None else found / US
            span *= 4

    def plan(self, last_run_at: datetime, now: float | None = None) -> Plan:
        now = time.time() if now is None else now
        return plan_ticks(
            to_us(last_run_at.timestamp()), to_us(now), to_us(self.within), self.following_us
        )

    def is_due(self, last_run_at: datetime) -> schedstate:
        p = self.plan(last_run_at)
        return schedstate(p.due, p.wait)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        p = self.plan(last_run_at)
        return timedelta(seconds=0 if p.due else p.wait)


@dataclass(frozen=True)
class Run:
    """Ticks of one schedule skipped for one reason (``REASONS``): from ``first`` to
    ``last`` (scheduled times, both included), ``count`` ticks of the schedule."""

    reason: str
    first: float
    last: float
    count: int


def run_of(grid: Grid, reason: str, after: float, until: float) -> Run | None:
    """The ticks in ``(after, until]`` as one run skipped for ``reason``; ``until`` is a
    tick of ``grid``. None if there is none."""
    first = grid.following(after)
    if to_us(first) > to_us(until):
        return None
    return Run(reason, first, until, _count(grid, after, until))


def _before(grid: Grid, after: float, tick_us: int) -> float | None:
    """The newest tick in ``(after, tick_us)``: strictly before ``tick_us``."""
    return grid.latest(after, (tick_us - 1) / US, early_us=0)


def jumped(grid: Grid, last_run_at: float, tick_at: float) -> Run | None:
    """The ticks a running beat skips (``window``) when it fires ``tick_at`` after the
    tick at (or the start recorded as) ``last_run_at``: those in between, which
    ``plan_ticks`` passed over for being more than the window late."""
    if to_us(grid.following(last_run_at)) >= to_us(tick_at):
        return None  # the next tick: nothing passed over
    before = _before(grid, last_run_at, to_us(tick_at))
    return None if before is None else run_of(grid, "window", last_run_at, before)


@dataclass(frozen=True)
class Resumed:
    """Where a beat that took the beat lock goes on from, for one entry: its
    ``last_run_at``, the one tick to fire at once (``catch_up="latest"``), and the
    ticks it skips, each run with its reason."""

    last_run_at: float
    fire: float | None = None
    missed: int = 0  # ticks that fell due while nobody fired (a crontab's counted up to
    # COUNT_LIMIT)
    skipped: tuple[Run, ...] = ()


def resume(
    grid: Grid, policy: str, last: float | None, now: float, paused_until: float | None = None
) -> Resumed:
    """Apply an entry's missed-tick policy: ``last`` is the time of its last tick (fired,
    or skipped) by any beat; None if it never had one. The ticks after ``last`` up to
    ``now`` were missed: none was fired, none counted skipped.

    First, those due while the entry was paused (up to ``paused_until``: when it was
    resumed, or ``now`` or later while it still is) are skipped, ``paused``. Of the
    others:

    - ``"all"``: every one fires, each with its own time, from the oldest within the
      window (``Grid.within``: ``now - tick <= within``), as ``plan_ticks`` decides;
      the older ones are skipped, ``window``;
    - ``"latest"``: the most recent fires if it is within the window; the others
      within the window are skipped, ``catch_up``, and the older ones ``window`` (all
      of them, the most recent too, when it is not within the window);
    - ``"none"``: none fires, and all are skipped, ``catch_up``: the policy, not the
      window, is why (with a window of any length none would fire).

    The runs returned account for every missed tick exactly once, fired or skipped.
    """
    if last is None or last > now:
        return Resumed(now)
    newest = grid.latest(last, now)
    if newest is None:
        return Resumed(last)  # nothing missed: the next tick is the next one
    missed = _count(grid, last, newest)
    runs: list[Run | None] = []
    start = last
    if paused_until is not None and paused_until > last:
        end = newest if paused_until >= now else grid.latest(last, paused_until, early_us=0)
        if end is not None:
            runs.append(run_of(grid, "paused", start, end))
            start = end

    def done(last_run_at: float, fire: float | None = None) -> Resumed:
        return Resumed(last_run_at, fire, missed, tuple(r for r in runs if r is not None))

    if to_us(start) >= to_us(newest):
        return done(start)  # every missed tick was due while paused
    # The newest missed tick older than the window: plan_ticks fires a tick only while
    # now - tick <= within.
    old = _before(grid, start, to_us(now) - to_us(grid.within))
    if policy == "all":
        if old is not None:
            runs.append(run_of(grid, "window", start, old))
        return done(start if old is None else old)
    if policy == "latest":
        if old is not None and to_us(old) >= to_us(newest):
            runs.append(run_of(grid, "window", start, newest))  # the newest is too old
            return done(newest)
        if old is not None:
            runs.append(run_of(grid, "window", start, old))
        previous = _before(grid, start if old is None else old, to_us(newest))
        if previous is not None:
            runs.append(run_of(grid, "catch_up", start if old is None else old, previous))
        return done(newest, fire=newest)
    runs.append(run_of(grid, "catch_up", start, newest))  # "none"
    return done(newest)


def _count(grid: Grid, after: float, until: float, limit: int = COUNT_LIMIT) -> int:
    """The ticks in ``(after, until]``."""
    if isinstance(grid, every) and grid.fixed is not None:
        iv = to_us(grid.fixed)
        return to_us(until) // iv - to_us(after) // iv
    n, tick, end = 0, grid.following_us(to_us(after)), to_us(until)
    while tick <= end and n < limit:
        n, tick = n + 1, grid.following_us(tick)
    return n


class every(Grid):  # noqa: N801 - named like celery's own ``crontab`` and ``schedule``
    """Fire every ``seconds`` on the wall-clock grid; ``every()`` means PUBLISH_INTERVAL.

    ``every()`` is resolved by pubtasks' beat scheduler when it starts
    (``with_default``), so PUBLISH_INTERVAL is read then, not when celeryconfig is
    imported.
    """

    def __init__(
        self, seconds: float | None = None, within: float = CATCH_UP_WITHIN, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._seconds = seconds
        self.within = within

    @property
    def fixed(self) -> float | None:
        """The interval given to ``every(seconds)``; None for ``every()`` (PUBLISH_INTERVAL)."""
        return self._seconds

    def with_default(self, seconds: float, within: float | None = None) -> every:
        """This schedule, with ``seconds`` standing in for PUBLISH_INTERVAL if it has none,
        and with the entry's catch-up window."""
        return every(
            self._seconds if self._seconds is not None else seconds,
            self.within if within is None else within,
        )

    @property
    def seconds(self) -> float:
        if self._seconds is None:
            raise RuntimeError(
                "every() takes PUBLISH_INTERVAL from pubtasks' beat scheduler; set "
                "beat_scheduler = 'pubtasks.beat:Scheduler' or give every() its seconds"
            )
        return self._seconds

    def following_us(self, t_us: int) -> int:
        iv = to_us(self.seconds)
        if iv <= 0:
            raise ValueError(f"interval must be positive, got {self.seconds!r}")
        return (t_us // iv + 1) * iv

    def latest(self, after: float, until: float, early_us: int = EARLY_US) -> float | None:
        iv = to_us(self.seconds)
        newest = (to_us(until) + early_us) // iv * iv
        return newest / US if newest > to_us(after) else None

    def __repr__(self) -> str:
        return "<every PUBLISH_INTERVAL>" if self._seconds is None else f"<every {self._seconds}s>"

    def describe(self) -> str:
        return "every PUBLISH_INTERVAL" if self._seconds is None else f"every {self._seconds:g} s"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self._seconds, self.within)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, every):
            return (self._seconds, self.within) == (other._seconds, other.within)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((every, self._seconds, self.within))


class once(Grid):  # noqa: N801 - named like ``every`` and celery's ``crontab``
    """Fire once, at ``at`` (seconds since the epoch, an aware datetime, or ISO-8601 with
    an offset); a one-off entry, finished after its tick (``max_runs`` 1)."""

    def __init__(self, at: float | datetime | str, within: float = CATCH_UP_WITHIN) -> None:
        super().__init__()
        self.at = instant_of(at)
        self.within = within

    def following_us(self, t_us: int) -> int:
        at = to_us(self.at)
        return at if t_us < at else NEVER_US

    def describe(self) -> str:
        return f"once at {datetime.fromtimestamp(self.at, UTC).isoformat()}"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.at, self.within)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, once):
            return (self.at, self.within) == (other.at, other.within)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((once, self.at, self.within))


def instant_of(value: float | datetime | str) -> float:
    """Seconds since the epoch of an instant given as a number, an aware datetime or an
    ISO-8601 string with an offset (``Z`` too). ``ValueError`` says what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO-8601 time; write e.g. 2026-12-24T18:00:00+01:00"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(f"{value!r} is not a time; give an ISO-8601 string or a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{value.isoformat()} has no time zone; add its offset, e.g. {value.isoformat()}+00:00"
        )
    return value.timestamp()
