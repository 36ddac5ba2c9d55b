"""``pubtasks schedule list``: every entry's schedule, ticks, state and counters.

Pure: ``rows`` builds the listing from the configuration and what was read from
Redis (``control.State``, the stats ``Snapshot``); ``render`` and ``as_json`` show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from pubtasks.control import State
from pubtasks.cron import grid_of
from pubtasks.entries import CatchUp, catch_up_of, publish_entries
from pubtasks.keys import COUNTERS
from pubtasks.records import Counts
from pubtasks.schedule import every
from pubtasks.times import moment

COLUMNS = (*COUNTERS, "pending", "skipped")


@dataclass(frozen=True)
class Row:
    name: str
    schedule: str
    catch_up: CatchUp | None  # None: a schedule that Celery catches up itself
    paused_since: float | None
    last_tick: float | None
    next_tick: float | None
    last_manual: float | None
    counts: Counts


def rows(
    beat_schedule: Mapping[str, Any],
    publish_interval: float,
    tz: tzinfo,
    *,
    state: State,
    entries: Mapping[str, Counts],
    now: float,
) -> list[Row]:
    """One row per publish entry of ``beat_schedule``, in its order."""
    out = []
    for name, spec in publish_entries(beat_schedule).items():
        policy = catch_up_of(spec.get("options"))
        grid = grid_of(spec.get("schedule"), publish_interval, tz, policy.within)
        if grid is None:
            described, next_tick = repr(spec.get("schedule")), None
        else:
            described = grid.describe() if isinstance(grid, every) else repr(grid)[1:-1]
            next_tick = grid.following(now)
        out.append(
            Row(
                name=name,
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
        status, last = "running", moment(r.last_tick, now)
        if r.paused_since is not None:
            status = f"PAUSED since {moment(r.paused_since, now)}"
            last += " (ticks since the pause are skipped)" if r.last_tick else ""
        nxt = "paused" if r.paused_since is not None else moment(r.next_tick, now)
        counters = "  ".join(f"{c} {getattr(r.counts, c)}" for c in COLUMNS)
        lines += [
            "",
            r.name,
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
                "schedule": r.schedule,
                "catch_up": None if r.catch_up is None else r.catch_up.policy,
                "catch_up_within": None if r.catch_up is None else r.catch_up.within,
                "paused": r.paused_since is not None,
                "paused_since": r.paused_since,
                "last_tick": r.last_tick,
                "next_tick": None if r.paused_since is not None else r.next_tick,
                "last_manual": r.last_manual,
                **{c: getattr(r.counts, c) for c in COLUMNS},
                "last_confirmed_at": r.counts.last_confirmed_at,
            }
            for r in listing
        },
    }
