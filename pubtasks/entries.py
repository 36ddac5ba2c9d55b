"""Schedule entries: ``beat_schedule`` checked, and each publish entry made a ``Recipe``.

An entry of ``pubtasks.publish`` says what its messages carry in its ``kwargs``
(``exchange``, ``routing_key``, ``body`` or ``payload``, ``serializer``,
``headers``, ``properties``), and what a message RabbitMQ returns does
(``on_return``: ``"retry"`` or ``"count"``, default ``ON_RETURN``). Everything
is checked when the worker or beat starts, and every mistake is one line that
names the entry and the field and says what to do::

    beat_schedule entry 'nightly': properties: 'priority' 300 is out of range; give an
    integer from 0 to 255

The publish task makes its recipe again from the kwargs that beat sent, with the
same checks, so a tick sent by a beat with another configuration fails with
its reason rather than publishing something else.
"""

from __future__ import annotations

import difflib
import functools
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval_schedule
from celery.utils.imports import import_from_cwd
from kombu import serialization

from pubtasks import defaults
from pubtasks.bounds import check_limits
from pubtasks.cron import Cron, grid_of
from pubtasks.errors import BodyError, ConfigError, kind_of
from pubtasks.message import NUMBER_HEADER, SCHEDULED_HEADER, Body, Payload, Recipe, encode
from pubtasks.schedule import POLICIES, Grid, every

#: What an entry's kwargs may say.
KWARGS = (
    "exchange",
    "routing_key",
    "body",
    "payload",
    "serializer",
    "headers",
    "properties",
    "on_return",
)
#: What beat adds to each tick's kwargs.
SET_BY_BEAT = ("entry", "scheduled_at", "number", "batch", "manual")
#: What an entry's options may say for pubtasks' beat (the rest go to Celery's
#: ``apply_async``): the missed-tick policy and its window, in seconds; and its limits
#: (``bounds``): a window of time, a number of runs, jitter, and what an overlap does.
CATCH_UP_OPTIONS = ("catch_up", "catch_up_within")
OPTIONS = (*CATCH_UP_OPTIONS, "start", "end", "max_runs", "jitter", "overlap")
#: The AMQP properties an entry may set: string ones, and the three checked apart.
STRING_PROPERTIES = ("type", "correlation_id", "reply_to", "content_type", "content_encoding")
PROPERTIES = (*STRING_PROPERTIES, "priority", "expiration", "delivery_mode")
#: Properties pubtasks sets itself, and why an entry may not.
NOT_PROPERTIES = {
    "message_id": "pubtasks sets it, stable per tick",
    "timestamp": "pubtasks sets it to the publish time",
    "app_id": "pubtasks sets it",
    "user_id": "RabbitMQ checks it against the connection's user; leave it out",
    "headers": "give the entry's 'headers' instead",
    "application_headers": "give the entry's 'headers' instead",
}
DELIVERY_MODES = {1: 1, 2: 2, "transient": 1, "persistent": 2}
#: Exchanges RabbitMQ always has: the default exchange and the amq.* ones.
BUILT_IN = ("", "amq.")
#: Types a value of an AMQP table can have (py-amqp's encoder).
TABLE_TYPES = (str, bytes, bool, int, float, Decimal, datetime, type(None))


@dataclass(frozen=True)
class Context:
    """What entries are checked against: the declared exchanges and the defaults."""

    exchanges: frozenset[str]
    exchange: str = defaults.EXCHANGE
    routing_key: str = defaults.ROUTING_KEY
    on_return: str = defaults.ON_RETURN
    publish_interval: float = defaults.PUBLISH_INTERVAL

    def declared(self, exchange: str) -> bool:
        return exchange in self.exchanges or exchange == "" or exchange.startswith("amq.")


def _short(name: str, what: str, value: Any, hint: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}{what} {value!r} is {kind_of(value)}; {hint}")
    if len(value.encode("utf-8", "surrogatepass")) > 255:
        raise ConfigError(f"{name}{what} is longer than AMQP's 255 bytes; shorten it")
    return value


def load_payload(path: Any) -> Payload:
    """The function named ``"package.module:function"``, imported as celeryconfig is
    (the current directory first, then ``sys.path``). Raises ``ValueError`` saying why not."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"{path!r} is not of the form 'package.module:function'")
    return _import(path)


@functools.lru_cache(maxsize=256)
def _import(path: str) -> Payload:
    """Found once per process: each tick makes its recipe again, and importing from the
    current directory moves ``sys.path`` about. (A failure is not kept: it raises.)"""
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = import_from_cwd(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"{path!r} cannot be imported: {exc}; put the module on the worker's sys.path "
            "or beside celeryconfig.py"
        ) from None
    except Exception as exc:  # the module itself raised on import
        raise ValueError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"{path!r}: {module_name!r} has no {attribute!r}") from None
    if not callable(found):
        raise ValueError(f"{path!r} is {kind_of(found)}, not a function")
    payload: Payload = found
    return payload


def _table(name: str, value: Any, where: str) -> None:
    """Check that ``value`` fits an AMQP table: string keys, values py-amqp can encode."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _short(name, f"{where} key", key, "header keys are strings")
            _table(name, item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _table(name, item, f"{where}[{i}]")
    elif not isinstance(value, TABLE_TYPES):
        raise ConfigError(
            f"{name}{where} is {kind_of(value)}, which an AMQP table cannot carry; "
            "use strings, numbers, booleans, None, lists and dicts"
        )


def _headers(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}'headers' must be a dict, not {kind_of(value)}")
    _table(name, value, "headers")
    for ours in (NUMBER_HEADER, SCHEDULED_HEADER):
        if ours in value:
            raise ConfigError(f"{name}headers: {ours!r} is set by pubtasks; leave it out")
    return dict(value)


def _properties(name: str, value: Any) -> dict[str, Any]:
    """The entry's AMQP properties, checked, in AMQP's terms (``expiration`` a string of ms)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}'properties' must be a dict, not {kind_of(value)}")
    where = f"{name}properties: "
    checked: dict[str, Any] = {}
    for key, given in value.items():
        if key in NOT_PROPERTIES:
            raise ConfigError(f"{where}{key!r} cannot be set: {NOT_PROPERTIES[key]}")
        if key in STRING_PROPERTIES:
            checked[key] = _short(where, repr(key), given, "give a string")
        elif key == "priority":
            if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= 255:
                raise ConfigError(
                    f"{where}'priority' {given!r} is out of range; give an integer from 0 to 255"
                )
            checked[key] = given
        elif key == "expiration":
            if isinstance(given, bool) or not isinstance(given, int) or given <= 0:
                raise ConfigError(
                    f"{where}'expiration' {given!r} is not a positive integer; give the "
                    "message TTL in milliseconds, e.g. 60000"
                )
            checked[key] = str(given)
        elif key == "delivery_mode":
            mode = DELIVERY_MODES.get(given) if isinstance(given, int | str) else None
            if mode is None or isinstance(given, bool):
                raise ConfigError(
                    f"{where}'delivery_mode' {given!r} must be 2 (persistent, the default) "
                    "or 1 (transient)"
                )
            checked[key] = mode
        else:
            close = difflib.get_close_matches(str(key), PROPERTIES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{where}{key!r} is not a property an entry can set; {hint}"
                f"use {', '.join(PROPERTIES)}"
            )
    return checked


def _on_return(name: str, value: Any) -> str:
    if value not in defaults.ON_RETURN_CHOICES:
        raise ConfigError(
            f"{name}'on_return' is {value!r}; give 'retry' (publish it again until "
            "TICK_DEADLINE) or 'count' (count it returned and move on)"
        )
    return str(value)


def recipe(entry: str, kwargs: Mapping[str, Any], context: Context) -> Recipe:
    """The recipe of entry ``entry`` from its ``kwargs``; ``ConfigError`` names what is wrong."""
    name = f"beat_schedule entry {entry!r}: "
    for key in kwargs:
        if key in SET_BY_BEAT:
            raise ConfigError(f"{name}kwargs: {key!r} is set by pubtasks' beat; leave it out")
        if key not in KWARGS:
            close = difflib.get_close_matches(str(key), KWARGS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{name}kwargs: {key!r} is not something an entry can say; {hint}"
                f"use {', '.join(KWARGS)}"
            )
    exchange = _short(
        name, "'exchange'", kwargs.get("exchange", context.exchange), "give an exchange's name"
    )
    if not context.declared(exchange):
        declared = ", ".join(repr(x) for x in sorted(context.exchanges)) or "none"
        raise ConfigError(
            f"{name}exchange {exchange!r} is not declared (declared: {declared}); add it to "
            "EXCHANGES or to a queue of QUEUES in celeryconfig.py, or name a declared one"
        )
    routing_key = _short(
        name,
        "'routing_key'",
        kwargs.get("routing_key", context.routing_key),
        "give a string, e.g. 'example.text'",
    )
    if "body" in kwargs and "payload" in kwargs:
        raise ConfigError(f"{name}give 'body' or 'payload', not both")
    serializer = kwargs.get("serializer")
    if serializer is not None:
        _short(name, "'serializer'", serializer, "name one, e.g. 'json'")
        if "body" not in kwargs and "payload" not in kwargs:
            raise ConfigError(
                f"{name}'serializer' applies to a 'body' or a 'payload'; give one or drop it"
            )
    body: Body | None = None
    if "body" in kwargs:
        try:
            body = encode(kwargs["body"], serializer)
        except BodyError as exc:
            raise ConfigError(f"{name}body: {exc}") from None
    payload: Payload | None = None
    payload_name = ""
    if "payload" in kwargs:
        payload_name = str(kwargs["payload"])
        try:
            payload = load_payload(kwargs["payload"])
            if serializer is not None:
                encode(None, serializer)  # is it there at all?
        except (ValueError, BodyError) as exc:
            raise ConfigError(f"{name}payload: {exc}") from None
    return Recipe(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        payload=payload,
        payload_name=payload_name,
        serializer=serializer,
        headers=_headers(name, kwargs.get("headers", {})),
        properties=_properties(name, kwargs.get("properties", {})),
        on_return=_on_return(name, kwargs.get("on_return", context.on_return)),
    )


def check_schedule_value(entry: str, value: Any) -> None:
    """A schedule is ``every(seconds)``, Celery's ``crontab``/``schedule``/``solar``, a
    ``timedelta`` or a number of seconds, positive where it is an interval."""
    name = f"beat_schedule entry {entry!r}: 'schedule' "
    hint = "give every(seconds), crontab(...), a timedelta or a positive number of seconds"
    if isinstance(value, every):
        seconds = value.fixed
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise ConfigError(f"{name}every({seconds!r}) is not a positive interval; {hint}")
        return
    if isinstance(value, interval_schedule):
        seconds = value.run_every.total_seconds()
    elif isinstance(value, crontab | Cron):
        try:
            (value if isinstance(value, Cron) else Cron(value, UTC)).next_after(datetime.now(UTC))
        except ValueError as exc:
            raise ConfigError(f"{name}{exc}; check its day, month and day of week") from None
        return
    elif isinstance(value, BaseSchedule):
        return  # solar: Celery's own
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{name}{value!r} is not a schedule; {hint}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name}{value!r} is not a positive interval; {hint}")


@dataclass(frozen=True)
class CatchUp:
    """An entry's missed-tick policy (``schedule.resume``) and its window in seconds."""

    policy: str = POLICIES[0]
    within: float = defaults.CATCH_UP_WITHIN


def catch_up_of(options: Mapping[str, Any] | None) -> CatchUp:
    """The policy an entry's ``options`` give (checked at start by ``check_schedule``)."""
    options = options or {}
    return CatchUp(
        str(options.get("catch_up", POLICIES[0])),
        float(options.get("catch_up_within", defaults.CATCH_UP_WITHIN)),
    )


def publish_entries(beat_schedule: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The entries of ``beat_schedule`` that run ``pubtasks.publish``, in its order."""
    return {
        name: spec
        for name, spec in beat_schedule.items()
        if isinstance(spec, Mapping) and spec.get("task") == defaults.TASK_NAME
    }


def task_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """An entry's options without pubtasks' own: what Celery's ``apply_async`` gets."""
    return {k: v for k, v in (options or {}).items() if k not in OPTIONS}


def options_of(beat_schedule: Mapping[str, Any] | None, entry: str) -> dict[str, Any]:
    """The task options of ``entry`` in ``beat_schedule`` (none if it is not there)."""
    spec = (beat_schedule or {}).get(entry) or {}
    return task_options(spec.get("options"))


def _check_catch_up(entry: str, options: Mapping[str, Any], schedule: Any) -> None:
    name = f"beat_schedule entry {entry!r}: options: "
    if not (options.keys() & set(CATCH_UP_OPTIONS)):
        return
    if not isinstance(schedule, every | crontab | Grid):
        raise ConfigError(
            f"{name}'catch_up' applies to every() and crontab() entries; give the entry "
            "'schedule': every(seconds) (a timedelta or a number keeps Celery's own catching up)"
        )
    policy = options.get("catch_up", POLICIES[0])
    if policy not in POLICIES:
        raise ConfigError(
            f"{name}'catch_up' is {policy!r}; give 'all' (fire every missed tick within "
            "'catch_up_within'), 'latest' (fire the most recent one) or 'none' (skip them)"
        )
    within = options.get("catch_up_within", defaults.CATCH_UP_WITHIN)
    if (
        isinstance(within, bool)
        or not isinstance(within, int | float)
        or not math.isfinite(within)
        or within <= 0
    ):
        raise ConfigError(
            f"{name}'catch_up_within' {within!r} is not a positive number of seconds; give "
            f"how late a missed tick may still fire, e.g. {defaults.CATCH_UP_WITHIN:g}"
        )


def _transportable(entry: str, kwargs: Mapping[str, Any], task_serializer: str) -> None:
    """Beat sends the kwargs with each tick: Celery's task serializer must take them."""
    try:
        serialization.dumps(dict(kwargs), serializer=task_serializer)
    except Exception as exc:
        raise ConfigError(
            f"beat_schedule entry {entry!r}: its kwargs cannot be sent as a Celery task with "
            f"task_serializer {task_serializer!r} ({exc}); use values it can carry"
        ) from None


def check_schedule(
    beat_schedule: Any,
    context: Context,
    known_tasks: Collection[str] | None = None,
    task_serializer: str = "json",
    resolve: Callable[[str, Mapping[str, Any], Context], Recipe] = recipe,
) -> dict[str, Recipe]:
    """Check every entry of ``beat_schedule``; the publish entries' recipes, by name.

    ``known_tasks`` are the app's registered task names (None: ``pubtasks.publish``
    only). Entries of other tasks get their task and schedule checked, nothing more.
    """
    if not isinstance(beat_schedule, Mapping):
        raise ConfigError(f"beat_schedule must be a dict of entries, not {kind_of(beat_schedule)}")
    tasks = set(known_tasks or ()) | {defaults.TASK_NAME}
    recipes: dict[str, Recipe] = {}
    # Entries alike but for their names (10,000 of them, say) are checked once: what is
    # checked does not depend on the name, but for jitter (drawn from it).
    checked: dict[str, Recipe] = {}
    for entry, spec in beat_schedule.items():
        alike = _alike(spec)
        if alike is not None and alike in checked and isinstance(entry, str) and entry:
            recipes[entry] = checked[alike]
            continue
        made = _check_entry(
            entry,
            spec,
            tasks=tasks,
            context=context,
            task_serializer=task_serializer,
            resolve=resolve,
        )
        if made is not None:
            recipes[entry] = made
            if alike is not None:
                checked[alike] = made
    return recipes


def _check_entry(
    entry: Any,
    spec: Any,
    *,
    tasks: set[str],
    context: Context,
    task_serializer: str,
    resolve: Callable[[str, Mapping[str, Any], Context], Recipe],
) -> Recipe | None:
    """Check one entry of ``beat_schedule``; its recipe (None: not a publish entry)."""
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"beat_schedule: entry name {entry!r} must be a non-empty string")
    name = f"beat_schedule entry {entry!r}: "
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{name}is {kind_of(spec)}, not a dict; write it as "
            "{'task': 'pubtasks.publish', 'schedule': every()}"
        )
    task = spec.get("task")
    if task is None:
        raise ConfigError(f"{name}has no 'task'; add 'task': {defaults.TASK_NAME!r}")
    if task not in tasks:
        close = difflib.get_close_matches(str(task), sorted(tasks), n=1)
        hint = close[0] if close else defaults.TASK_NAME
        raise ConfigError(f"{name}task {task!r} is not a registered task; did you mean {hint!r}?")
    if "schedule" not in spec:
        raise ConfigError(f"{name}has no 'schedule'; add e.g. 'schedule': every()")
    check_schedule_value(entry, spec["schedule"])
    if task != defaults.TASK_NAME:
        return None
    if spec.get("args"):
        raise ConfigError(f"{name}'args' are not taken; put everything in 'kwargs'")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{name}'kwargs' must be a dict, not {kind_of(kwargs)}")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{name}'options' must be a dict, not {kind_of(options)}")
    if "expires" in options:
        raise ConfigError(
            f"{name}options: 'expires' would let Celery drop a tick unseen; leave it out "
            "(TICK_DEADLINE bounds how late a tick may publish, and counts it failed)"
        )
    _check_catch_up(entry, options, spec["schedule"])
    grid = grid_of(spec["schedule"], context.publish_interval, UTC)
    check_limits(entry, options, grid, time.time())
    made = resolve(entry, kwargs, context)
    _transportable(entry, kwargs, task_serializer)
    return made


def _alike(spec: Any) -> str | None:
    """What makes a publish entry's check the same as another's (None: check it alone):
    its schedule, kwargs and options as written (``repr``: a dict written in another
    order is only checked again)."""
    if not isinstance(spec, Mapping) or spec.get("task") != defaults.TASK_NAME:
        return None
    options = spec.get("options") or {}
    if not isinstance(options, Mapping) or "jitter" in options:
        return None
    return repr((spec.get("schedule"), spec.get("kwargs"), options, spec.get("args")))
