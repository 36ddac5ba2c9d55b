"""Where an entry goes on from when a beat takes the beat lock (``beat``): pure."""

from __future__ import annotations

from pubtasks.records import ResumePoint
from pubtasks.schedule import Grid, Resumed, Run, resume


def going_on(
    grid: Grid, policy: str, point: ResumePoint, queued: float | None, now: float
) -> tuple[float | None, Resumed]:
    """Where an entry goes on from when a beat takes the beat lock: the tick to fire
    again, if any, and ``schedule.resume`` from the entry's latest tick handled.

    That is its last tick sent or skipped (``beat:last``), or a later one: the latest
    tick numbered (a beat that died between numbering it and recording it sent: it is
    fired again, with its number, whatever the policy; the ticks before it were all
    sent or skipped, in order), or the latest waiting in this beat (``queued``: fired
    while it thought it led, to be sent).
    """
    last, numbered = point.last_at, point.numbered_at
    handled = [t for t in (last, numbered, queued) if t is not None]
    base = max(handled) if handled else None
    again = None
    if numbered is not None and all(numbered > t for t in (last, queued) if t is not None):
        again = numbered
    paused_until = now if point.paused else point.resumed_at
    return again, resume(grid, policy, base, now, paused_until)


def summary(runs: tuple[Run, ...]) -> str:
    return ", ".join(f"{r.count} {r.reason}" for r in runs) or "none"
