"""``pubtasks schedule add | edit | remove | show | export | apply | backfill``: the
run-time entries from the command line, through the Python API (``runtime``)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pubtasks.bounds import entry_grid, limits_of
from pubtasks.catalog import Change
from pubtasks.cron import zone_name
from pubtasks.entries import catch_up_of
from pubtasks.errors import ConfigError
from pubtasks.listing import state_of
from pubtasks.runtime import BACKFILL_MAX, Schedules, recipe
from pubtasks.schedule import POLICIES, has_next, to_us
from pubtasks.specs import entry_of, instant_in, iso, pairs, parse_value, spec_of, zone

ACTIONS = ("add", "edit", "remove", "show", "export", "apply", "backfill")
#: Fire times ``show`` lists, and runs.
NEXT_SHOWN = 5
RUNS_SHOWN = 10


def recipe_arguments(parser: argparse.ArgumentParser, adding: bool) -> None:
    """The options of ``add`` (each optional for ``edit``)."""
    when = parser.add_mutually_exclusive_group(required=adding)
    when.add_argument("--every", type=float, metavar="SECONDS", help="fire every SECONDS")
    when.add_argument("--cron", metavar='"MIN HOUR DOM MON DOW"', help="fire as cron does")
    when.add_argument("--at", metavar="ISO-8601", help="fire once, at this time")
    parser.add_argument(
        "--timezone", metavar="ZONE", help="the zone of --cron and of times without an offset"
    )
    parser.add_argument("--exchange", metavar="NAME", help="a declared exchange")
    parser.add_argument("--routing-key", metavar="KEY")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="JSON", help="the message body, as JSON")
    body.add_argument("--body-file", metavar="PATH", help="the body, from a file (JSON or text)")
    body.add_argument("--payload", metavar="MODULE:FUNCTION", help="a function makes the body")
    parser.add_argument(
        "--header", action="append", metavar="KEY=VALUE", help="a header (JSON, else a string)"
    )
    parser.add_argument(
        "--property", action="append", metavar="KEY=VALUE", help="an AMQP property, e.g. priority=5"
    )
    parser.add_argument("--serializer", metavar="NAME")
    parser.add_argument("--catch-up", choices=POLICIES)
    parser.add_argument("--catch-up-within", type=float, metavar="SECONDS")
    parser.add_argument("--start", metavar="ISO-8601", help="no tick before this time")
    parser.add_argument("--end", metavar="ISO-8601", help="no tick after this time")
    parser.add_argument("--max-runs", type=int, metavar="N", help="fire N ticks, then finish")
    parser.add_argument(
        "--jitter", type=float, metavar="SECONDS", help="move each tick by [0, SECONDS)"
    )
    parser.add_argument("--on-return", choices=("retry", "count"))
    parser.add_argument("--overlap", choices=("allow", "skip"))


def recipe_of(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe (whole, or the change) the options of ``add`` or ``edit`` give."""
    body: Any = None
    given_body = False
    if args.body is not None:
        try:
            body, given_body = json.loads(args.body), True
        except ValueError as exc:
            raise ConfigError(f"--body is not JSON ({exc}); quote a string as '\"text\"'") from None
    elif args.body_file is not None:
        try:
            text = Path(args.body_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"--body-file: cannot read {args.body_file}: {exc.strerror}"
            ) from None
        body, given_body = parse_value(text), True
    extra: dict[str, Any] = {"body": body} if given_body else {}
    return recipe(
        every=args.every,
        cron=args.cron,
        at=args.at,
        timezone=args.timezone,
        exchange=args.exchange,
        routing_key=args.routing_key,
        payload=args.payload,
        headers=None if args.header is None else pairs("--header", args.header),
        properties=None if args.property is None else pairs("--property", args.property),
        serializer=args.serializer,
        on_return=args.on_return,
        catch_up=args.catch_up,
        catch_up_within=args.catch_up_within,
        start=args.start,
        end=args.end,
        max_runs=args.max_runs,
        jitter=args.jitter,
        overlap=args.overlap,
        **extra,
    )


def _change_line(change: Change) -> str:
    sign = {"add": "+", "edit": "~", "remove": "-"}[change.op]
    what = {"add": "added", "edit": "changed", "remove": "removed"}[change.op]
    return f"{sign} {change.name}  {what}"


def run(schedules: Schedules, args: argparse.Namespace) -> int:
    """One of the actions above; 0 when done (a ``ConfigError`` exits 2, with its line)."""
    action = args.action
    if action == "add":
        version = schedules.add(args.entry, recipe_of(args))
        print(f"added {args.entry} (version {version}): beat fires it from its next tick")
    elif action == "edit":
        change = recipe_of(args)
        if not change.get("schedule") and not any(
            change.get(k) for k in ("timezone", "kwargs", "options")
        ):
            raise ConfigError("schedule edit: give at least one option to change")
        version = schedules.edit(args.entry, change)
        print(f"changed {args.entry} (version {version}): from its next tick numbered")
    elif action == "remove":
        version = schedules.remove(args.entry)
        print(
            f"removed {args.entry} (version {version}): it fires nothing more; its counters "
            "and history stay"
        )
    elif action == "show":
        shown = show(schedules, args.entry, time.time())
        print(json.dumps(shown, sort_keys=True) if args.json else render(shown))
    elif action == "export":
        document = schedules.export()
        print(json.dumps(document, sort_keys=True, indent=None if args.json else 2, default=str))
    elif action == "apply":
        return apply(schedules, args)
    else:
        return backfill(schedules, args)
    return 0


def apply(schedules: Schedules, args: argparse.Namespace) -> int:
    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"schedule apply: cannot read {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"schedule apply: {args.file} is not JSON: {exc}") from None
    planned = schedules.plan(document)
    for change in planned.changes:
        print(_change_line(change))
    if planned.left:
        print(f"  (config entries, left as celeryconfig.py says: {', '.join(planned.left)})")
    if not planned.changes:
        print("no changes: the run-time entries are what the file says")
    elif args.dry_run:
        print(f"dry run: {len(planned.changes)} change(s) not made")
    else:
        version = schedules.apply(planned)
        print(f"applied {len(planned.changes)} change(s) (version {version})")
    return 0


def backfill(schedules: Schedules, args: argparse.Namespace) -> int:
    tz = schedules.app.timezone
    try:
        start, end = instant_in(args.start, tz), instant_in(args.end, tz)
    except ValueError as exc:
        raise ConfigError(f"schedule backfill: {exc}") from None
    if args.max < 1:
        raise ConfigError("schedule backfill: --max must be at least 1")
    sent = schedules.backfill(args.entry, start, end, args.max)
    if not sent:
        print(f"{args.entry} has no tick from {iso(start)} to {iso(end)}: nothing fired")
    else:
        print(
            f"fired {len(sent)} tick(s) of {args.entry}, {sent[0]} to {sent[-1]} (those "
            "confirmed before publish nothing)"
        )
    return 0


def show(schedules: Schedules, name: str, now: float) -> dict[str, Any]:
    """What ``schedule show`` says of entry ``name``: recipe, next times, runs, counters."""
    app, settings = schedules.app, schedules.settings
    removed_at = None
    try:
        source, entry = schedules.recipe_of(name)
    except ConfigError:
        gone = schedules.catalog.removed(name)
        if gone is None:
            raise
        source, entry, removed_at = "runtime", entry_of(name, gone[0].spec, app.timezone), gone[1]
    policy = catch_up_of(entry.get("options"))
    grid = entry_grid(name, entry, settings.publish_interval, app.timezone, policy.within)
    spec = spec_of(entry, settings.publish_interval, app.timezone)
    schedule = entry.get("schedule")
    tz = zone(spec["timezone"]) if spec.get("timezone") else app.timezone
    upcoming: list[float] = []
    if grid is not None and removed_at is None:
        t = grid.following_us(to_us(now))
        while has_next(t) and len(upcoming) < NEXT_SHOWN:
            upcoming.append(t / 1e6)
            t = grid.following_us(t)
    runs = schedules.catalog.runs([name]).get(name, 0)
    limit = limits_of(entry.get("options"), schedule).max_runs
    k = schedules.stats.keys
    with schedules.stats.converted():
        paused = bool(schedules.stats.client.hexists(k.paused, name))
        last = schedules.stats.client.get(k.beat_last(name))
    state = state_of(grid, limit, runs, paused, None if last is None else float(last))
    if removed_at is not None:
        state = "removed"
    counts = schedules.stats.snapshot().entries.get(name)
    return {
        "name": name,
        "source": source,
        "state": state,
        "removed_at": removed_at,
        "recipe": spec,
        "zone": zone_name(tz),
        "runs": runs,
        "max_runs": limit,
        "next": [
            {"utc": iso(t), "local": datetime.fromtimestamp(t, UTC).astimezone(tz).isoformat()}
            for t in upcoming
        ],
        "last_runs": schedules.stats.history(name, RUNS_SHOWN),
        "counters": {} if counts is None else _counters(counts),
    }


def _counters(counts: Any) -> dict[str, Any]:
    return {k: v for k, v in asdict(counts).items() if v is not None}


def render(shown: dict[str, Any]) -> str:
    r = shown["recipe"]
    where = "celeryconfig.py" if shown["source"] == "config" else "run time"
    lines = [
        f"{shown['name']}  ({where}, {shown['state']})",
        f"  schedule   {json.dumps(r['schedule'])}"
        + (f" in {r['timezone']}" if r.get("timezone") else ""),
        f"  kwargs     {json.dumps(r.get('kwargs') or {}, sort_keys=True, default=str)}",
        f"  options    {json.dumps(r.get('options') or {}, sort_keys=True, default=str)}",
    ]
    if shown["max_runs"] is not None:
        lines.append(f"  runs       {shown['runs']} of {shown['max_runs']}")
    lines.append(f"  next       (UTC, and {shown['zone']})")
    lines += [f"    {n['utc']}   {n['local']}" for n in shown["next"]] or ["    none"]
    lines.append("  last runs  (newest first: message_id, outcome, lateness, attempts)")
    for run_ in shown["last_runs"]:
        reason = f"  {run_['reason']}" if run_.get("reason") else ""
        lines.append(
            f"    {run_['message_id']}  {run_['outcome']}  {run_['lateness']:.3f} s  "
            f"{run_['attempts']}{reason}"
        )
    if not shown["last_runs"]:
        lines.append("    none yet")
    counters = "  ".join(f"{k} {v}" for k, v in shown["counters"].items() if isinstance(v, int))
    lines.append(f"  counters   {counters or 'none yet'}")
    return "\n".join(lines)


def parsers(actions: Any) -> None:
    """Add the actions above to ``pubtasks schedule``'s subparsers."""
    add = actions.add_parser("add", help="add a run-time entry (kept in Redis, fleet-wide)")
    add.add_argument("entry", help="its name (not one of celeryconfig.py's)")
    recipe_arguments(add, adding=True)
    edit = actions.add_parser("edit", help="change a run-time entry, from its next tick")
    edit.add_argument("entry")
    recipe_arguments(edit, adding=False)
    remove = actions.add_parser("remove", help="remove a run-time entry; its counters stay")
    remove.add_argument("entry")
    show_ = actions.add_parser(
        "show", help="an entry's recipe, next fire times, last runs and counters"
    )
    show_.add_argument("entry")
    show_.add_argument("--json", action="store_true", help="print one JSON object")
    export = actions.add_parser("export", help="every entry, as a file that apply takes")
    export.add_argument("--json", action="store_true", help="one line of JSON")
    apply_ = actions.add_parser(
        "apply", help="make the run-time entries what FILE says; print the changes"
    )
    apply_.add_argument("file")
    apply_.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    back = actions.add_parser(
        "backfill", help="fire an entry's ticks of a past window, each with its own id"
    )
    back.add_argument("entry")
    back.add_argument("--from", dest="start", required=True, metavar="ISO-8601")
    back.add_argument("--to", dest="end", required=True, metavar="ISO-8601")
    back.add_argument(
        "--max", type=int, default=BACKFILL_MAX, help=f"at most this many (default {BACKFILL_MAX})"
    )
