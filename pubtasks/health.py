"""``pubtasks health``: is every publish entry confirming the ticks its schedule made due?

Pure judgement (``verdicts``) apart from the I/O (``read_fleet``; the CLI and the
exporter read the rest). Each entry is judged by its own schedule:

- **The fleet first.** With no live worker (a worker's heartbeat, ``worker:<id>``,
  expires 10 s after its last) or no beat holding the beat lock (it expires 10 s
  after its last renewal; a beat stopped cleanly releases it), nothing is published:
  every entry is unhealthy, whatever its schedule, about 10 s after the last one died.
- **Then each entry.** It is healthy until a tick that fell due after its last
  confirm has gone unconfirmed for ``timing.HEALTH_GRACE`` seconds. Ticks before the start are not
  asked for: the start is when the beat now firing took the beat lock (``beat:since``:
  a worker's start, or a takeover, after which the entry's ``catch_up`` decides what
  is fired of the past), or the entry's resume, if later. So a fresh start is healthy
  until its first tick is due (an hourly entry: up to an hour), plus the grace.
- "The first tick after a moment" comes from the entry's schedule: a ``Grid`` (``every``
  and crontabs, in their zone, as beat makes them: ``cron.grid_of``) knows it exactly;
  for Celery's interval schedules (a ``timedelta``, a number of seconds, ``schedule``),
  which run an interval after their last run, it is at most one interval later; any
  other Celery schedule is asked (``remaining_estimate``).
- A paused entry is reported as paused, and is not unhealthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from celery.schedules import BaseSchedule
from celery.schedules import schedule as interval_schedule

from pubtasks import timing
from pubtasks.bounds import entry_grid
from pubtasks.cron import grid_of
from pubtasks.entries import publish_entries
from pubtasks.records import Counts
from pubtasks.schedule import NEVER_US, US, every
from pubtasks.stats import Stats
from pubtasks.times import stamp

#: The first tick of a schedule strictly after a moment (seconds since the epoch).
Following = Callable[[float], float]


def interval_of(spec: Any, publish_interval: float) -> float | None:
    """Seconds between an entry's ticks, or None when it has no fixed interval."""
    if isinstance(spec, every):
        return spec.fixed if spec.fixed is not None else publish_interval
    if isinstance(spec, int | float):
        return float(spec)
    if isinstance(spec, timedelta):
        return spec.total_seconds()
    if isinstance(spec, interval_schedule):
        return float(spec.run_every.total_seconds())
    return None


def intervals(beat_schedule: Mapping[str, Any], publish_interval: float) -> dict[str, float]:
    """The publish entries of ``beat_schedule`` that have a fixed interval."""
    found = {}
    for name, entry in publish_entries(beat_schedule).items():
        seconds = interval_of(entry.get("schedule"), publish_interval)
        if seconds is not None:
            found[name] = seconds
    return found


def _asked(spec: BaseSchedule) -> Following:
    def following(t: float) -> float:
        remaining = spec.remaining_estimate(datetime.fromtimestamp(t, UTC))
        return time.time() + max(float(remaining.total_seconds()), 0.0)

    return following


def following_of(spec: Any, publish_interval: float, tz: tzinfo) -> Following | None:
    """When an entry's schedule makes its next tick due, after a moment; None: never
    known (not a schedule)."""
    grid = grid_of(spec, publish_interval, tz)
    if grid is not None:
        return grid.following
    seconds = interval_of(spec, publish_interval)
    if seconds is not None:
        return lambda t: t + seconds
    if isinstance(spec, BaseSchedule):
        return _asked(spec)
    return None


def schedules(
    beat_schedule: Mapping[str, Any],
    publish_interval: float,
    tz: tzinfo,
    finished: Collection[str] = (),
) -> dict[str, Following | None]:
    """Each publish entry of ``beat_schedule``, with how its ticks fall due (within its
    window, jittered: ``bounds``); a ``finished`` one has none due (``never``)."""
    out: dict[str, Following | None] = {}
    for name, entry in publish_entries(beat_schedule).items():
        grid = entry_grid(name, entry, publish_interval, tz)
        if name in finished:
            out[name] = never
        elif grid is not None:
            out[name] = grid.following
        else:
            out[name] = following_of(entry.get("schedule"), publish_interval, tz)
    return out


def never(t: float) -> float:
    """The ``Following`` of a finished entry: no tick is ever due."""
    return NEVER_US / US


@dataclass(frozen=True)
class Fleet:
    """What is alive, as Redis says: workers whose heartbeat has not expired, the beat
    holding the beat lock, and when that beat took it."""

    workers: int
    beat: str | None
    since: float | None

    @property
    def problem(self) -> str | None:
        if not self.workers:
            return f"no worker is alive (no worker heartbeat in the last {timing.WORKER_TTL:g} s)"
        if self.beat is None:
            return "no beat holds the beat lock: no tick is fired"
        return None


@dataclass(frozen=True)
class Verdict:
    entry: str
    healthy: bool
    reason: str


def judge(
    name: str,
    following: Following | None,
    counts: Counts | None,
    now: float,
    fleet: Fleet,
    *,
    paused: float | None = None,
    resumed: float | None = None,
    grace: float = timing.HEALTH_GRACE,
) -> Verdict:
    """One entry's verdict at ``now``: see the module's docstring."""
    if fleet.problem is not None:  # paused or not: nothing publishes, nothing resumes
        return Verdict(name, False, f"{name}: {fleet.problem}")
    if paused is not None:
        return Verdict(name, True, f"{name}: paused {now - paused:.1f} s ago")
    confirmed = counts.last_confirmed_at if counts else None
    starts = [t for t in (fleet.since, resumed) if t is not None]
    start = max(starts) if starts else None
    since = [
        t
        for t in (start, None if confirmed is None else confirmed + timing.HEALTH_SKEW)
        if t is not None
    ]
    if not since:  # a beat that records no start (an older pubtasks) and no confirm yet
        return Verdict(name, False, f"{name}: no confirmed publish yet")
    if following is None:
        return Verdict(name, True, f"{name}: not a schedule pubtasks can judge; fleet alive")
    base = max(since)
    try:
        due = following(base)
    except ValueError:  # a crontab that matches no date any more: nothing is due
        return Verdict(name, True, f"{name}: no tick due any more")
    if due >= NEVER_US / US:  # finished: its max_runs had, its one-off or its end past
        return Verdict(name, True, f"{name}: finished, no tick due any more")
    confirm = "none yet" if confirmed is None else f"{now - confirmed:.1f} s ago"
    if due + grace <= now:
        return Verdict(
            name,
            False,
            f"{name}: the tick due at {stamp(due)} ({now - due:.1f} s ago) is not confirmed "
            f"within {grace:g} s (last confirm {confirm}); see `pubtasks stats` for the "
            "last error",
        )
    if start is None or (confirmed is not None and confirmed >= start):
        head = f"{name}: last confirm {confirm}"
    else:
        head = f"{name}: {'resumed' if start == resumed else 'started'} {now - start:.1f} s ago"
    when = f"in {due - now:.1f} s" if due > now else f"{now - due:.1f} s ago, within the grace"
    return Verdict(name, True, f"{head}; next tick due {when}")


def verdicts(
    expected: Mapping[str, Following | None],
    seen: Mapping[str, Counts],
    now: float,
    fleet: Fleet,
    *,
    paused: Mapping[str, float] | None = None,
    resumed: Mapping[str, float] | None = None,
    grace: float = timing.HEALTH_GRACE,
) -> list[Verdict]:
    """Judge each expected entry (``schedules``) at ``now``; ``paused`` and ``resumed``
    say since when an entry is paused, or when it was last resumed."""
    paused, resumed = paused or {}, resumed or {}
    return [
        judge(
            name,
            following,
            seen.get(name),
            now,
            fleet,
            paused=paused.get(name),
            resumed=resumed.get(name),
            grace=grace,
        )
        for name, following in sorted(expected.items())
    ]


def check(
    expected: Mapping[str, Following | None],
    seen: Mapping[str, Counts],
    now: float,
    fleet: Fleet,
    *,
    paused: Mapping[str, float] | None = None,
    resumed: Mapping[str, float] | None = None,
) -> tuple[bool, list[str]]:
    """(healthy, lines) for the CLI: the fleet's problem once, or one line per entry."""
    if not expected:
        return False, ["no publish entry in beat_schedule to check"]
    judged = verdicts(expected, seen, now, fleet, paused=paused, resumed=resumed)
    healthy = all(v.healthy for v in judged)
    if fleet.problem is not None and not healthy:
        return False, [fleet.problem]
    return healthy, [v.reason for v in judged]


def read_fleet(stats: Stats, holder: str | None) -> Fleet:
    """The live workers (their heartbeats), and since when the beat lock's ``holder``
    (read with the control state) holds it. Reads only; two round trips."""
    k = stats.keys
    with stats.converted():
        with stats.client.pipeline(transaction=False) as pipe:
            pipe.smembers(k.workers)
            pipe.get(k.beat_since)
            ids, since = pipe.execute()
        records = stats.client.mget([k.worker(str(i)) for i in ids]) if ids else []
    workers = sum(1 for r in records if r is not None)
    return Fleet(workers, holder, None if since is None else float(since))
