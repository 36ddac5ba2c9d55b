"""``pubtasks schedule list``: every entry's schedule, ticks, state and counters.

Pure: ``rows`` builds the listing from the configuration and what was read from
Redis (``control.State``, the stats ``Snapshot``); ``render`` and ``as_json`` show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from pubtasks.bounds import entry_grid, limits_of
from pubtasks.control import State
from pubtasks.entries import CatchUp, catch_up_of, publish_entries
from pubtasks.keys import COUNTERS
from pubtasks.records import Counts
from pubtasks.schedule import Grid, every, has_next, to_us
from pubtasks.times import moment

COLUMNS = (*COUNTERS, "pending", "skipped")


#: What an entry is doing: firing its ticks, paused, or done with them (its max_runs
#: had, its one-off fired, its end passed).
STATES = ("active", "paused", "finished")


@dataclass(frozen=True)
class Row:
    name: str
    source: str  # "config" (celeryconfig.py) or "runtime" (``schedule add``)
    state: str  # STATES
    schedule: str
    catch_up: CatchUp | None  # None: a schedule that Celery catches up itself
    paused_since: float | None
    last_tick: float | None
    next_tick: float | None
    last_manual: float | None
    counts: Counts


@dataclass(frozen=True)
class Shape:
    """What an entry's schedule and options make of it: its grid (None: a schedule
    Celery catches up itself), its catch-up and its max_runs."""

    grid: Grid | None
    catch_up: CatchUp
    max_runs: int | None


def shapes(
    entries: Mapping[str, Mapping[str, Any]], publish_interval: float, tz: tzinfo
) -> dict[str, Shape]:
    """Each entry's ``Shape``; made once for entries alike but for their names (10,000
    of them, say), unless they have a jitter, which is drawn from the name."""
    made: dict[str, Shape] = {}
    out = {}
    for name, spec in entries.items():
        options = spec.get("options") or {}
        key = None if "jitter" in options else repr((spec.get("schedule"), sorted(options.items())))
        shape = made.get(key) if key is not None else None
        if shape is None:
            policy = catch_up_of(options)
            shape = Shape(
                entry_grid(name, spec, publish_interval, tz, policy.within),
                policy,
                limits_of(options, spec.get("schedule")).max_runs,
            )
            if key is not None:
                made[key] = shape
        out[name] = shape
    return out


def rows(
    beat_schedule: Mapping[str, Any],
    publish_interval: float,
    tz: tzinfo,
    *,
    state: State,
    entries: Mapping[str, Counts],
    now: float,
    runtime: Mapping[str, Mapping[str, Any]] | None = None,
    runs: Mapping[str, int] | None = None,
) -> list[Row]:
    """One row per publish entry of ``beat_schedule``, in its order, then one per
    ``runtime`` entry (``specs.entry_of``); ``runs``: ticks numbered (``max_runs``)."""
    out = []
    config = publish_entries(beat_schedule)
    both = [(n, "config", spec) for n, spec in config.items()]
    both += [(n, "runtime", spec) for n, spec in (runtime or {}).items() if n not in config]
    made = shapes({name: spec for name, _, spec in both}, publish_interval, tz)
    for name, source, spec in both:
        shape = made[name]
        grid, policy = shape.grid, shape.catch_up
        if grid is None:
            described, next_tick = repr(spec.get("schedule")), None
        else:
            described = grid.describe() if isinstance(grid, every) else repr(grid)[1:-1]
            following = grid.following_us(to_us(now))
            next_tick = following / 1e6 if has_next(following) else None
        limit = shape.max_runs
        ran = (runs or {}).get(name, 0)
        paused = name in state.paused
        out.append(
            Row(
                name=name,
                source=source,
                state=state_of(grid, limit, ran, paused, state.last.get(name)),
                schedule=described,
                catch_up=None if grid is None else policy,
                paused_since=state.paused.get(name),
                last_tick=state.last.get(name),
                next_tick=next_tick,
                last_manual=state.triggered.get(name),
                counts=entries.get(name, Counts()),
            )
        )
    return out


def state_of(
    grid: Grid | None, max_runs: int | None, runs: int, paused: bool, last: float | None
) -> str:
    """``finished`` once the entry had its ``max_runs``, or its last tick (``once``, or
    the last before its ``end``) was handled (``last``: beat:last); else paused or active."""
    if max_runs is not None and runs >= max_runs:
        return "finished"
    if grid is not None and last is not None and not has_next(grid.following_us(to_us(last))):
        return "finished"
    return "paused" if paused else "active"


def holder_line(state: State) -> str:
    if state.holder is None:
        return "beat lock   nobody holds it: no beat is firing ticks"
    ttl = (
        "" if state.holder_ttl is None else f" (expires in {state.holder_ttl:.1f} s unless renewed)"
    )
    return f"beat lock   held by {state.holder}{ttl}"


def render(listing: list[Row], state: State, where: str, prefix: str, now: float) -> str:
    lines = [f"pubtasks schedule  ({where}, prefix {prefix!r})", holder_line(state)]
    if state.waiting:
        lines.append(f"triggers    {state.waiting} waiting for the beat holder")
    for r in listing:
        catch_up = (
            "Celery's own"
            if r.catch_up is None
            else f"{r.catch_up.policy} within {r.catch_up.within:g} s"
        )
        status, last = r.state, moment(r.last_tick, now)
        if r.state == "paused":
            status = f"PAUSED since {moment(r.paused_since, now)}"
            last += " (ticks since the pause are skipped)" if r.last_tick else ""
        nxt = {"paused": "paused", "finished": "none (finished)"}.get(
            r.state, moment(r.next_tick, now)
        )
        counters = "  ".join(f"{c} {getattr(r.counts, c)}" for c in COLUMNS)
        lines += [
            "",
            f"{r.name}  ({'celeryconfig.py' if r.source == 'config' else 'run time'})",
            f"  schedule   {r.schedule}; catch_up {catch_up}",
            f"  state      {status}",
            f"  last tick  {last}",
            f"  next tick  {nxt}",
            f"  by hand    {moment(r.last_manual, now)}",
            f"  counters   {counters}",
        ]
    return "\n".join(lines)


def as_json(listing: list[Row], state: State) -> dict[str, Any]:
    return {
        "beat_lock": {"holder": state.holder, "expires_in": state.holder_ttl},
        "triggers_waiting": state.waiting,
        "entries": {
            r.name: {
                "source": r.source,
                "state": r.state,
                "schedule": r.schedule,
                "catch_up": None if r.catch_up is None else r.catch_up.policy,
                "catch_up_within": None if r.catch_up is None else r.catch_up.within,
                "paused": r.paused_since is not None,
                "paused_since": r.paused_since,
                "last_tick": r.last_tick,
                "next_tick": r.next_tick if r.state == "active" else None,
                "last_manual": r.last_manual,
                **{c: getattr(r.counts, c) for c in COLUMNS},
                "last_confirmed_at": r.counts.last_confirmed_at,
            }
            for r in listing
        },
    }
