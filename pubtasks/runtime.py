"""Run-time entries from Python: what ``pubtasks schedule add``, ``edit``, ``remove``,
``apply``, ``export`` and ``backfill`` do, for applications that make entries in code
(as redbeat's ``RedBeatSchedulerEntry(...).save()`` and django-celery-beat's
``PeriodicTask`` allow)::

    from pubtasks.runtime import Schedules, recipe

    schedules = Schedules()  # REDIS_URL and STATS_PREFIX, as the worker reads them
    schedules.add(
        "nightly-report",
        recipe(cron="0 3 * * *", timezone="Europe/Paris",
               routing_key="reports.nightly", body={"kind": "nightly"}),
    )
    schedules.edit("nightly-report", recipe(routing_key="reports.daily"))
    schedules.remove("nightly-report")

Every change is checked exactly as an entry of celeryconfig.py is, with the same
messages (``ConfigError``, nothing stored), and made in one Lua call (``catalog``).
Entries of celeryconfig.py stay the base: a run-time entry cannot take their names,
and ``edit`` and ``remove`` refuse them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from pubtasks import defaults
from pubtasks.bounds import entry_grid
from pubtasks.catalog import Catalog, Change, Loaded, Stored
from pubtasks.entries import check_schedule, publish_entries, task_options
from pubtasks.errors import ConfigError
from pubtasks.message import tick_kwargs
from pubtasks.records import SentTick
from pubtasks.schedule import has_next, once, to_us
from pubtasks.specs import FORMAT, dumps, entry_of, instant_in, iso, spec_of, zone
from pubtasks.stats import Stats

#: ``backfill`` fires at most this many ticks unless told otherwise.
BACKFILL_MAX = 1000
_UNSET: Any = object()


def recipe(
    *,
    every: float | None = None,
    cron: str | None = None,
    at: str | datetime | None = None,
    timezone: str | None = None,
    exchange: str | None = None,
    routing_key: str | None = None,
    body: Any = _UNSET,
    payload: str | None = None,
    headers: Mapping[str, Any] | None = None,
    properties: Mapping[str, Any] | None = None,
    serializer: str | None = None,
    on_return: str | None = None,
    catch_up: str | None = None,
    catch_up_within: float | None = None,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    max_runs: int | None = None,
    jitter: float | None = None,
    overlap: str | None = None,
) -> dict[str, Any]:
    """A recipe (``specs``) of what is given: whole for ``add``, a change for ``edit``.
    Times without an offset are local times in ``timezone`` (for ``add``: else
    Celery's ``timezone``), resolved when the recipe is stored."""
    given = [k for k, v in (("every", every), ("cron", cron), ("at", at)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"schedule: give one of --every, --cron and --at, not {given}")
    out: dict[str, Any] = {}
    if every is not None:
        out["schedule"] = {"every": every}
    elif cron is not None:
        out["schedule"] = {"cron": cron}
    elif at is not None:
        out["schedule"] = {"at": at.isoformat() if isinstance(at, datetime) else at}
    if timezone is not None:
        out["timezone"] = timezone
    if body is not _UNSET and payload is not None:
        raise ConfigError("schedule: give a body or a payload, not both")
    kwargs = {
        "exchange": exchange,
        "routing_key": routing_key,
        "payload": payload,
        "headers": None if headers is None else dict(headers),
        "properties": None if properties is None else dict(properties),
        "serializer": serializer,
        "on_return": on_return,
    }
    out["kwargs"] = {k: v for k, v in kwargs.items() if v is not None}
    if body is not _UNSET:
        out["kwargs"]["body"] = body
    options = {
        "catch_up": catch_up,
        "catch_up_within": catch_up_within,
        "start": start.isoformat() if isinstance(start, datetime) else start,
        "end": end.isoformat() if isinstance(end, datetime) else end,
        "max_runs": max_runs,
        "jitter": jitter,
        "overlap": overlap,
    }
    out["options"] = {k: v for k, v in options.items() if v is not None}
    return out


def merged(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` laid over it (``edit``): a schedule, a zone, each kwarg and
    option given replaces its own (``body`` and ``payload`` replace each other)."""
    out = copy.deepcopy(dict(base))
    for key in ("schedule", "timezone"):
        if key in change:
            out[key] = change[key]
    kwargs = dict(out.get("kwargs") or {})
    new = dict(change.get("kwargs") or {})
    if "body" in new:
        kwargs.pop("payload", None)
    if "payload" in new:
        kwargs.pop("body", None)
    kwargs.update(new)
    out["kwargs"] = kwargs
    out["options"] = {**(out.get("options") or {}), **(change.get("options") or {})}
    return out


def resolved(spec: Mapping[str, Any], default_tz: tzinfo) -> dict[str, Any]:
    """``spec`` with its times as ISO-8601 in UTC: a time without an offset is a local
    time in the recipe's ``timezone`` (else ``default_tz``). ``ConfigError`` if bad."""
    out = copy.deepcopy(dict(spec))
    try:
        tz = zone(str(out["timezone"])) if out.get("timezone") is not None else default_tz
    except ValueError as exc:
        raise ConfigError(f"schedule: --timezone: {exc}") from None
    schedule = out.get("schedule")
    if isinstance(schedule, Mapping) and isinstance(schedule.get("at"), str):
        try:
            out["schedule"] = {"at": iso(instant_in(schedule["at"], tz))}
        except ValueError as exc:
            raise ConfigError(f"schedule: --at: {exc}") from None
    options = dict(out.get("options") or {})
    for key in ("start", "end"):
        if isinstance(options.get(key), str):
            try:
                options[key] = iso(instant_in(options[key], tz))
            except ValueError as exc:
                raise ConfigError(f"schedule: --{key}: {exc}") from None
    if options:
        out["options"] = options
    return out


@dataclass(frozen=True)
class Planned:
    """What ``apply`` does: the changes, and the config entries it leaves alone."""

    changes: list[Change]
    left: list[str]


class Schedules:
    """The run-time entries of the app's Redis and prefix (``app``: the Celery app)."""

    def __init__(self, app: Any = None, stats: Stats | None = None) -> None:
        if app is None:
            from pubtasks.celery import app as pubtasks_app  # noqa: PLC0415 - made on use

            app = pubtasks_app
        self.app = app
        self.settings = app.settings
        self.stats = stats if stats is not None else Stats.of(self.settings)
        self.catalog = Catalog(self.stats)

    @property
    def config(self) -> dict[str, Mapping[str, Any]]:
        """The publish entries of celeryconfig.py's ``beat_schedule``."""
        return publish_entries(self.app.conf.beat_schedule or {})

    def check(self, name: str, spec: Mapping[str, Any], now: float) -> dict[str, Any]:
        """``spec`` resolved and checked as a config entry is; ``ConfigError`` if not."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ConfigError(f"schedule: entry name {name!r} must be a non-empty string")
        if name in (self.app.conf.beat_schedule or {}):
            raise ConfigError(
                f"schedule: {name!r} is an entry of beat_schedule in celeryconfig.py; a run-time "
                "entry cannot take its name: give another"
            )
        spec = resolved(spec, self.app.timezone)
        entry = entry_of(name, spec, self.app.timezone)
        serializer = str(self.app.conf.task_serializer or "json")
        check_schedule({name: entry}, self.settings.context, list(self.app.tasks), serializer)
        schedule = entry["schedule"]
        if isinstance(schedule, once) and schedule.at < now:
            raise ConfigError(
                f"beat_schedule entry {name!r}: 'schedule': at {iso(schedule.at)} is in the "
                "past; give a time to come"
            )
        return spec

    def _not_config(self, name: str) -> None:
        if name in (self.app.conf.beat_schedule or {}):
            raise ConfigError(
                f"schedule: {name!r} comes from celeryconfig.py; change it in the file and "
                "restart the worker"
            )

    def add(self, name: str, spec: Mapping[str, Any], now: float | None = None) -> int:
        """Add run-time entry ``name``; the new version."""
        now = time.time() if now is None else now
        checked = self.check(name, spec, now)
        return self.catalog.change([Change("add", name, Stored(checked, now, now))], now)

    def edit(self, name: str, change: Mapping[str, Any], now: float | None = None) -> int:
        """Lay ``change`` (a partial recipe) over run-time entry ``name``; the new version."""
        now = time.time() if now is None else now
        self._not_config(name)
        stored = self._stored(name)
        checked = self.check(name, merged(stored.spec, change), now)
        new = Stored(checked, stored.added_at, now)
        return self.catalog.change([Change("edit", name, new, stored.rev)], now)

    def remove(self, name: str, now: float | None = None) -> int:
        """Remove run-time entry ``name``: it fires nothing more; its counters stay."""
        now = time.time() if now is None else now
        self._not_config(name)
        stored = self._stored(name)
        return self.catalog.change([Change("remove", name, None, stored.rev)], now)

    def _stored(self, name: str) -> Stored:
        stored = self.catalog.get(name)
        if stored is None:
            raise ConfigError(
                f"schedule: there is no run-time entry {name!r}; 'pubtasks schedule list' "
                "shows the entries"
            )
        return stored

    def get(self, name: str) -> Stored | None:
        return self.catalog.get(name)

    def load(self) -> Loaded:
        return self.catalog.load()

    def export(self) -> dict[str, Any]:
        """Every entry, config and run-time, as the file ``apply`` takes."""
        interval, tz = self.settings.publish_interval, self.app.timezone
        entries: dict[str, Any] = {
            name: {"source": "config", **spec_of(entry, interval, tz)}
            for name, entry in self.config.items()
        }
        for name, stored in sorted(self.load().entries.items()):
            entries[name] = {"source": "runtime", **stored.spec}
        return {"format": FORMAT, "entries": entries}

    def plan(self, document: Any, now: float | None = None) -> Planned:
        """The changes that make the run-time entries what ``document`` (``export``'s
        format) says, each checked; ``ConfigError`` for the first that is wrong."""
        now = time.time() if now is None else now
        if not isinstance(document, Mapping) or not isinstance(document.get("entries"), Mapping):
            raise ConfigError(
                "schedule apply: the file must be a JSON object with 'entries', as "
                "'pubtasks schedule export' writes it"
            )
        stored = self.load().entries
        changes, left, wanted = [], [], set()
        for name, given in document["entries"].items():
            if not isinstance(given, Mapping):
                raise ConfigError(f"schedule apply: entry {name!r} is not a recipe (a dict)")
            source = given.get("source", "runtime")
            spec = {k: v for k, v in given.items() if k != "source"}
            if source == "config":
                if name not in self.config:
                    raise ConfigError(
                        f"schedule apply: entry {name!r} is marked config, but celeryconfig.py "
                        "has no such publish entry; mark it runtime or drop it"
                    )
                left.append(name)
                continue
            if source != "runtime":
                raise ConfigError(
                    f"schedule apply: entry {name!r}: source {source!r}; give 'config' or 'runtime'"
                )
            wanted.add(name)
            old = stored.get(name)
            if old is not None and dumps(resolved(spec, self.app.timezone)) == dumps(old.spec):
                continue
            checked = self.check(name, spec, now)
            if old is None:
                changes.append(Change("add", name, Stored(checked, now, now)))
            else:
                changes.append(Change("edit", name, Stored(checked, old.added_at, now), old.rev))
        for name in sorted(set(stored) - wanted):
            changes.append(Change("remove", name, None, stored[name].rev))
        return Planned(changes, left)

    def apply(self, planned: Planned, now: float | None = None) -> int | None:
        """Make ``planned``'s changes, all or none; the new version (None: none to make)."""
        if not planned.changes:
            return None
        return self.catalog.change(planned.changes, time.time() if now is None else now)

    def recipe_of(self, name: str) -> tuple[str, dict[str, Any]]:
        """(source, the ``beat_schedule`` entry) of entry ``name``; ``ConfigError`` if none."""
        if name in self.config:
            return "config", dict(self.config[name])
        stored = self.get(name)
        if stored is None:
            raise ConfigError(
                f"schedule: there is no entry {name!r}; 'pubtasks schedule list' shows them"
            )
        return "runtime", entry_of(name, stored.spec, self.app.timezone)

    def backfill(self, name: str, start: float, end: float, most: int = BACKFILL_MAX) -> list[str]:
        """Fire the ticks of entry ``name`` scheduled in ``[start, end]`` (both past), each
        with its own time, id and number (those it had, if beat still keeps them); the
        ids sent. Ticks already confirmed publish nothing (their done marks, kept
        ``DONE_KEPT``). ``ConfigError`` if they are more than ``most``."""
        now = time.time()
        _, entry = self.recipe_of(name)
        if end < start:
            raise ConfigError("schedule backfill: --to is before --from; give a later --to")
        if end > now:
            raise ConfigError(
                f"schedule backfill: --to {iso(end)} is in the future; backfill fires ticks "
                "that fell due already"
            )
        grid = entry_grid(name, entry, self.settings.publish_interval, self.app.timezone)
        if grid is None:
            raise ConfigError(
                f"schedule backfill: {name!r} is not on a grid (every, crontab or once): "
                "its ticks have no fixed times"
            )
        ticks, t = [], grid.following_us(to_us(start) - 1)
        while has_next(t) and t <= to_us(end):
            ticks.append(t / 1_000_000)
            if len(ticks) > most:
                raise ConfigError(
                    f"schedule backfill: {name!r} has more than {most} ticks from {iso(start)} "
                    f"to {iso(end)}; narrow the window or raise --max"
                )
            t = grid.following_us(t)
        batch = self.settings.publish_batch
        options = task_options(entry.get("options"))
        sent = []
        for at in ticks:
            number = self.stats.backfill_number(name, at, batch)
            kwargs = tick_kwargs(entry.get("kwargs"), name, at, number, batch)
            member = SentTick.member_of(name, at, number, batch, False)
            self.stats.ledger.keep({member: time.time()})  # a lost task message is sent again
            self.app.send_task(defaults.TASK_NAME, kwargs=kwargs, **options)
            sent.append(SentTick.parse(member).tick_id)
        return sent
