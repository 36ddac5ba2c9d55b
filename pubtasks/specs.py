"""Run-time entries as data: the recipe ``pubtasks schedule add`` stores (pure).

A run-time entry is stored in Redis (``catalog``) as JSON, the same recipe that
``schedule export`` writes and ``schedule apply`` reads::

    {"schedule": {"every": 10}, "timezone": "Europe/Paris",
     "kwargs": {"routing_key": "example.nightly", "body": {"hello": 1}},
     "options": {"catch_up": "latest", "max_runs": 3, "jitter": 2}}

``schedule`` is one of ``{"every": SECONDS}``, ``{"cron": "MIN HOUR DOM MON DOW"}``
(in ``timezone``, else Celery's ``timezone``) or ``{"at": ISO-8601}`` (a one-off).
``kwargs`` and ``options`` are those of a ``beat_schedule`` entry; ``entry_of`` makes
one of them, which ``entries.check_schedule`` checks exactly as celeryconfig's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

from pubtasks import defaults
from pubtasks.bounds import crontab_of
from pubtasks.cron import Cron, zone_name, zone_of
from pubtasks.errors import ConfigError, kind_of
from pubtasks.schedule import every, instant_of, once

SCHEDULES = ("every", "cron", "at")
FIELDS = ("schedule", "timezone", "kwargs", "options")
#: What ``export`` says an entry came from.
SOURCES = ("config", "runtime")
#: The format of ``export``'s file.
FORMAT = 1


def zone(name: str) -> tzinfo:
    """The IANA zone ``name``; ``ValueError`` if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone; give e.g. 'Europe/Paris'") from None


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def instant_in(text: str, tz: tzinfo) -> float:
    """An ISO-8601 time; without an offset it is a local time in ``tz``."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 time; write e.g. 2026-12-24T18:00:00+01:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return instant_of(parsed)


def _fail(name: str, text: str) -> ConfigError:
    return ConfigError(f"beat_schedule entry {name!r}: {text}")


def entry_of(name: str, spec: Mapping[str, Any], tz: tzinfo) -> dict[str, Any]:
    """The ``beat_schedule`` entry a run-time recipe stands for (``tz``: Celery's
    ``timezone``, for a crontab without a zone of its own). ``ConfigError`` for a recipe
    that is not one; the entry itself is checked by ``entries.check_schedule``."""
    if not isinstance(spec, Mapping):
        raise _fail(name, f"is {kind_of(spec)}, not a recipe (a dict)")
    for key in spec:
        if key not in FIELDS:
            raise _fail(name, f"{key!r} is not part of a recipe; use {', '.join(FIELDS)}")
    given = spec.get("schedule")
    if not isinstance(given, Mapping) or len(given) != 1 or next(iter(given)) not in SCHEDULES:
        raise _fail(
            name,
            "'schedule' must be one of {'every': SECONDS}, {'cron': 'MIN HOUR DOM MON DOW'} "
            "or {'at': ISO-8601}",
        )
    kind, value = next(iter(given.items()))
    own = spec.get("timezone")
    try:
        entry_tz = tz if own is None else zone(str(own))
        schedule: Any
        if kind == "every":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"every {value!r} is not a positive number of seconds")
            schedule = every(float(value))
        elif kind == "cron":
            parsed = crontab_of(str(value))
            schedule = parsed if own is None else Cron(parsed, entry_tz)
        else:
            schedule = once(instant_in(str(value), entry_tz))
    except ValueError as exc:
        raise _fail(name, f"'schedule': {exc}") from None
    kwargs = {} if spec.get("kwargs") is None else spec["kwargs"]
    options = {} if spec.get("options") is None else spec["options"]
    for field, found in (("kwargs", kwargs), ("options", options)):
        if not isinstance(found, Mapping):
            raise _fail(name, f"{field!r} must be a dict, not {kind_of(found)}")
    return {
        "task": defaults.TASK_NAME,
        "schedule": schedule,
        "kwargs": dict(kwargs),
        "options": dict(options),
    }


def spec_of(entry: Mapping[str, Any], publish_interval: float, tz: tzinfo) -> dict[str, Any]:
    """A ``beat_schedule`` entry written as a recipe (``export`` of a config entry). A
    schedule that is not a grid is written as its interval, or as its repr."""
    schedule = entry.get("schedule")
    out: dict[str, Any] = {}
    if isinstance(schedule, every):
        out["schedule"] = {"every": schedule.fixed or publish_interval}
    elif isinstance(schedule, crontab | Cron):
        cron = schedule if isinstance(schedule, Cron) else Cron(schedule, zone_of(schedule, tz))
        fields = cron.describe().removeprefix("crontab ").rsplit(" (", 1)[0]
        out["schedule"] = {"cron": fields}
        out["timezone"] = zone_name(cron.tz)
    elif isinstance(schedule, once):
        out["schedule"] = {"at": iso(schedule.at)}
    else:
        seconds = getattr(getattr(schedule, "run_every", None), "total_seconds", None)
        value = seconds() if seconds else schedule
        out["schedule"] = {"every": value if isinstance(value, int | float) else repr(value)}
    out["kwargs"] = dict(entry.get("kwargs") or {})
    options = {k: v for k, v in (entry.get("options") or {}).items()}
    for key in ("start", "end"):
        if isinstance(options.get(key), datetime):
            options[key] = options[key].isoformat()
    out["options"] = options
    return out


def dumps(spec: Mapping[str, Any]) -> str:
    """The recipe as stored and compared: JSON, keys sorted (bytes and the like as text)."""
    return json.dumps(spec, sort_keys=True, default=str)


def parse_value(text: str) -> Any:
    """A ``--header`` or ``--property`` value: JSON when it parses as JSON, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def pairs(option: str, given: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments of ``option`` as a dict; ``ConfigError`` names a bad one."""
    out = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {item!r} is not KEY=VALUE; write e.g. {option} x-tenant=7")
        out[key] = parse_value(value)
    return out
