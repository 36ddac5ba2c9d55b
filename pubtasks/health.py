"""``pubtasks health``: is every interval entry confirming on time?

Pure judgement (``verdicts``) apart from the I/O (``check``): an entry is
healthy when its last confirmed publish is no older than three of its
intervals, counted from its resume if it was resumed since. A paused entry is
reported as paused, and is not unhealthy. Crontab entries have no fixed interval
and are not judged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery.schedules import schedule as interval_schedule

from pubtasks.entries import publish_entries
from pubtasks.schedule import every
from pubtasks.stats import Counts

#: An entry is late when its last confirm is older than this many intervals.
INTERVALS = 3


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


@dataclass(frozen=True)
class Verdict:
    entry: str
    healthy: bool
    reason: str


def verdicts(
    expected: Mapping[str, float],
    seen: Mapping[str, Counts],
    now: float,
    paused: Mapping[str, float] | None = None,
    resumed: Mapping[str, float] | None = None,
) -> list[Verdict]:
    """Judge each expected entry by the age of its last confirmed publish; ``paused``
    and ``resumed`` say since when an entry is paused, or when it was last resumed."""
    out = []
    paused, resumed = paused or {}, resumed or {}
    for name, seconds in sorted(expected.items()):
        if name in paused:
            since = now - paused[name]
            out.append(Verdict(name, True, f"{name}: paused {since:.1f} s ago"))
            continue
        limit = INTERVALS * seconds
        counts = seen.get(name)
        at = counts.last_confirmed_at if counts else None
        if name in resumed and (at is None or at < resumed[name]) and now - resumed[name] <= limit:
            age = now - resumed[name]
            out.append(Verdict(name, True, f"{name}: resumed {age:.1f} s ago"))
            continue
        if at is None:
            out.append(Verdict(name, False, f"{name}: no confirmed publish yet"))
            continue
        age = now - at
        if age > limit:
            out.append(
                Verdict(
                    name,
                    False,
                    f"{name}: last confirm {age:.1f} s ago, more than {INTERVALS} x "
                    f"{seconds:g} s; see `pubtasks stats` for the last error",
                )
            )
        else:
            out.append(Verdict(name, True, f"{name}: last confirm {age:.1f} s ago"))
    return out


def check(
    beat_schedule: Mapping[str, Any],
    publish_interval: float,
    entries: Mapping[str, Counts],
    paused: Mapping[str, float] | None = None,
    resumed: Mapping[str, float] | None = None,
) -> tuple[bool, list[str]]:
    """(healthy, lines) for the CLI."""
    expected = intervals(beat_schedule, publish_interval)
    if not expected:
        return False, ["no interval entry in beat_schedule to check"]
    judged = verdicts(expected, entries, time.time(), paused, resumed)
    return all(v.healthy for v in judged), [v.reason for v in judged]
