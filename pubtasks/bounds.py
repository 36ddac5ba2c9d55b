"""An entry's limits: a window, a number of runs, jitter and overlap (pure).

The options ``start``, ``end``, ``max_runs``, ``jitter`` and ``overlap`` of an entry
(in ``celeryconfig.py``, or given to ``pubtasks schedule add``) bound its ticks:

- ``start`` and ``end`` (aware datetimes or ISO-8601 with an offset): no tick falls
  before ``start`` or after ``end``; after ``end`` the entry is finished.
- ``jitter`` (seconds): each tick moves later by an offset in ``[0, jitter)``, whole
  milliseconds, derived from the entry's name and its point on the schedule
  (SHA-256), so every beat agrees on it and the tick's ``message_id`` is stable, as
  APScheduler's ``max_jitter`` and Temporal's jitter do. It must be shorter than the
  shortest gap between two ticks, so that ticks stay in order.
- ``max_runs``: the entry numbers that many ticks, counted in Redis atomically with
  each tick's number (``Stats.tick_number``), then is finished. A one-off (``once``)
  has one run.
- ``overlap``: ``"allow"`` (the default) or ``"skip"``: a tick due while the entry's
  previous tick is neither confirmed nor failed is skipped, counted ``overlap``.

``Bounded`` applies the window and the jitter to a schedule's ``Grid``, so beat,
``schedule list``, ``health`` and the exporter see the same ticks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from celery.schedules import crontab

from pubtasks.cron import grid_of
from pubtasks.defaults import CATCH_UP_WITHIN
from pubtasks.errors import ConfigError
from pubtasks.schedule import NEVER_US, US, Grid, every, has_next, instant_of, once, to_us

OVERLAPS = ("allow", "skip")
#: Ticks looked at to find a crontab's shortest gap (``jitter`` must be shorter).
GAPS_CHECKED = 500


def offset_ms(name: str, point_us: int, jitter: float) -> int:
    """The jitter of the tick at ``point_us`` of entry ``name``: whole ms in [0, jitter)."""
    span = int(jitter * 1000)
    if span <= 0:
        return 0
    digest = hashlib.sha256(f"{name}@{point_us}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


class Bounded(Grid):
    """``base``'s ticks, each moved by its jitter, those in ``[start, end]`` only."""

    def __init__(
        self,
        base: Grid,
        name: str,
        start: float | None = None,
        end: float | None = None,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.base, self.name = base, name
        self.start, self.end, self.jitter = start, end, jitter
        self.within = base.within

    def following_us(self, t_us: int) -> int:
        span = int(self.jitter * 1000) * 1000
        lower = t_us if self.start is None else max(t_us, to_us(self.start) - 1)
        point = self.base.following_us(lower - span)
        while has_next(point):
            tick = point + offset_ms(self.name, point, self.jitter) * 1000
            if self.end is not None and tick > to_us(self.end):
                return NEVER_US
            if tick > lower:
                return tick
            point = self.base.following_us(point)
        return NEVER_US

    def describe(self) -> str:
        described = self.base.describe() if hasattr(self.base, "describe") else repr(self.base)
        parts = [described]
        if self.start is not None:
            parts.append(f"from {datetime.fromtimestamp(self.start, UTC).isoformat()}")
        if self.end is not None:
            parts.append(f"until {datetime.fromtimestamp(self.end, UTC).isoformat()}")
        if self.jitter:
            parts.append(f"jitter {self.jitter:g} s")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.base, self.name, self.start, self.end, self.jitter)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Bounded):
            return self._key() == other._key()
        return NotImplemented

    def _key(self) -> tuple[Any, ...]:
        return (self.base, self.name, self.start, self.end, self.jitter)

    def __hash__(self) -> int:
        return hash((Bounded, self.name, self.start, self.end, self.jitter))


@dataclass(frozen=True)
class Limits:
    """An entry's limits, as its options give them (checked: ``check_limits``)."""

    start: float | None = None
    end: float | None = None
    max_runs: int | None = None
    jitter: float = 0.0
    overlap: str = OVERLAPS[0]

    @property
    def bounds(self) -> bool:
        """Does it move or bound the ticks (a ``Bounded`` grid)?"""
        return self.start is not None or self.end is not None or self.jitter > 0


def limits_of(options: Mapping[str, Any] | None, schedule: Any = None) -> Limits:
    """The limits an entry's ``options`` give; a ``once`` schedule runs once."""
    options = options or {}
    start, end = options.get("start"), options.get("end")
    runs = options.get("max_runs")
    if isinstance(schedule, Bounded):
        schedule = schedule.base
    if isinstance(schedule, once):
        runs = 1
    return Limits(
        start=None if start is None else instant_of(start),
        end=None if end is None else instant_of(end),
        max_runs=None if runs is None else int(runs),
        jitter=float(options.get("jitter", 0.0)),
        overlap=str(options.get("overlap", OVERLAPS[0])),
    )


def bounded(name: str, grid: Grid, limits: Limits) -> Grid:
    return Bounded(grid, name, limits.start, limits.end, limits.jitter) if limits.bounds else grid


def entry_grid(
    name: str,
    spec: Mapping[str, Any],
    publish_interval: float,
    tz: tzinfo,
    within: float = CATCH_UP_WITHIN,
) -> Grid | None:
    """The ticks of entry ``name`` (its ``schedule`` made a ``Grid``, ``cron.grid_of``),
    within its window and with its jitter; None for Celery's other schedules."""
    schedule = spec.get("schedule")
    if isinstance(schedule, Bounded):  # from beat's schedule file, or made already
        schedule = schedule.base
    grid = grid_of(schedule, publish_interval, tz, within)
    if grid is None:
        return None
    return bounded(name, grid, limits_of(spec.get("options"), schedule))


def _seconds(where: str, key: str, value: Any, hint: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{where}{key!r} {value!r} is not a number of seconds; {hint}")
    return float(value)


def shortest_gap(grid: Grid, now: float) -> float | None:
    """The shortest time between two of the next ``GAPS_CHECKED`` ticks (None: under two)."""
    if isinstance(grid, every):
        return grid.seconds
    gaps, tick = [], grid.following_us(to_us(now))
    for _ in range(GAPS_CHECKED):
        after = grid.following_us(tick)
        if not has_next(after):
            break
        gaps.append(after - tick)
        tick = after
    return min(gaps) / US if gaps else None


def check_limits(entry: str, options: Mapping[str, Any], grid: Grid | None, now: float) -> None:
    """Check the limits in an entry's ``options``; ``grid`` is its schedule's (None: not a
    grid: Celery's own ``timedelta`` or number, which takes no limits)."""
    where = f"beat_schedule entry {entry!r}: options: "
    given = [k for k in ("start", "end", "max_runs", "jitter", "overlap") if k in options]
    if not given:
        return
    if grid is None:
        raise ConfigError(
            f"{where}{given[0]!r} applies to every(), crontab() and once() entries; give the "
            "entry 'schedule': every(seconds)"
        )
    times = {}
    for key in ("start", "end"):
        if key in options:
            try:
                times[key] = instant_of(options[key])
            except ValueError as exc:
                raise ConfigError(f"{where}{key!r}: {exc}") from None
    if "start" in times and "end" in times and times["end"] < times["start"]:
        raise ConfigError(f"{where}'end' is before 'start'; give an end after the start")
    if "max_runs" in options:
        runs = options["max_runs"]
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ConfigError(
                f"{where}'max_runs' {runs!r} is not a positive integer; give how many ticks "
                "the entry fires, e.g. 10"
            )
    overlap = options.get("overlap", OVERLAPS[0])
    if overlap not in OVERLAPS:
        raise ConfigError(
            f"{where}'overlap' is {overlap!r}; give 'allow' (every tick fires) or 'skip' "
            "(skip a tick while the previous one is neither confirmed nor failed)"
        )
    if "jitter" in options:
        jitter = _seconds(where, "jitter", options["jitter"], "give e.g. 5")
        gap = None if isinstance(grid, once) else shortest_gap(grid, now)
        if gap is not None and jitter >= gap:
            raise ConfigError(
                f"{where}'jitter' {jitter:g} s is not shorter than the {gap:g} s between two "
                "of its ticks; give less, so that its ticks stay in order"
            )


def crontab_of(fields: str) -> crontab:
    """A crontab from cron's five fields, "MIN HOUR DOM MON DOW"; ``ValueError`` if not."""
    parts = fields.split()
    if len(parts) != 5:
        raise ValueError(
            f'{fields!r} is not five cron fields; write "MIN HOUR DOM MON DOW", e.g. "*/5 * * * *"'
        )
    try:
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except Exception as exc:  # Celery's parser raises ValueError and its own ParseException
        raise ValueError(f"{fields!r}: {exc}") from None
