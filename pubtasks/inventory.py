"""Every entry, from celeryconfig.py and from run time, as ``schedule list``, ``health``
and the exporter see them: read from Redis in one place (``take``), judged purely."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from pubtasks.catalog import Catalog
from pubtasks.control import State
from pubtasks.entries import publish_entries
from pubtasks.errors import ConfigError
from pubtasks.listing import shapes, state_of
from pubtasks.specs import SOURCES, entry_of
from pubtasks.stats import Stats


@dataclass(frozen=True)
class Inventory:
    """The publish entries (``beat_schedule`` entries, config first), where each comes
    from (``specs.SOURCES``), and the ticks each has numbered for its ``max_runs``."""

    entries: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)

    @property
    def runtime(self) -> dict[str, Mapping[str, Any]]:
        return {n: e for n, e in self.entries.items() if self.sources[n] == SOURCES[1]}

    def states(self, publish_interval: float, tz: tzinfo, state: State) -> dict[str, str]:
        """Each entry's state (``listing.STATES``); ``state.last`` must hold them all."""
        out = {}
        made = shapes(self.entries, publish_interval, tz)
        for name in self.entries:
            shape = made[name]
            paused = name in state.paused
            last = state.last.get(name)
            runs = self.runs.get(name, 0)
            out[name] = state_of(shape.grid, shape.max_runs, runs, paused, last)
        return out

    def counted(self, states: Mapping[str, str]) -> dict[tuple[str, str], int]:
        """How many entries there are by (source, state)."""
        out: dict[tuple[str, str], int] = {}
        for name, state in states.items():
            key = (self.sources[name], state)
            out[key] = out.get(key, 0) + 1
        return out


def take(stats: Stats, beat_schedule: Mapping[str, Any], tz: tzinfo) -> Inventory:
    """The entries of ``beat_schedule`` and the run-time ones in Redis (one that no longer
    passes as a recipe is left out: beat says why, when it reads it)."""
    config = publish_entries(beat_schedule)
    entries: dict[str, Mapping[str, Any]] = dict(config)
    sources = dict.fromkeys(config, SOURCES[0])
    for name, stored in sorted(Catalog(stats).load().entries.items()):
        if name in config:
            continue
        try:
            entries[name] = entry_of(name, stored.spec, tz)
        except ConfigError:
            continue
        sources[name] = SOURCES[1]
    return Inventory(entries, sources, Catalog(stats).runs(entries))
